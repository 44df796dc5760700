"""Importing existing files into an Iceberg table (the ``import_files`` job), one module per step.

Which source URIs are accepted is a rule of the domain (``lakehouse.domain.import_uris``).

* ``job``: the job itself, its three passes (check, write, commit) end to end.
* ``sources``: finding the source files (lookup, listing, formats).
* ``readers``: reading sources as Arrow (Parquet, CSV, JSON lines).
* ``read_errors``: what a failed read says, naming the source, never quoting its content.
* ``schema_check``: whether a file's columns fit the table.
* ``registration``: registering a Parquet file in place, without a copy.
* ``writer``: writing rewritten rows as data files in bounded memory.
* ``commit``: the one ``fast_append`` and the outcome it records.
"""
