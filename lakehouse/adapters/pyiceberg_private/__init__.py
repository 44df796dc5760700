"""The one place that uses pyiceberg's private API, one module per concern.

pyiceberg's public API is used everywhere else. What the service needs beyond it lives here,
each use with a contract test that fails loudly when an upgrade changes what it relies on
(``tests/adapters/test_pyiceberg_private_*.py``, ``tests/hardening/test_table_properties.py``,
``tests/hardening/test_stalled_readers.py``); that is also why ``pyproject.toml`` pins
pyiceberg to its minor version.

* ``io``: every FileIO built from the service's configuration, location providers from the
  table's location only (a table's properties never reach the storage layer).
* ``writes``: data files written with usable writer values and pages sized by bytes.
* ``commits``: requirements and updates added to a transaction; the ``replace`` producer
  compaction commits with; a transaction that computes its metadata once per change.
* ``scans``: one data file read as pyiceberg's scan reads it, in small batches.
"""
