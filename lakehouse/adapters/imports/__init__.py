"""Importing existing files into an Iceberg table (the ``import_files`` job), one module per step.

* ``job``: the job itself, its three passes (check, write, commit) end to end.
* ``uri_policy``: which source URIs are accepted: canonical form, allowed prefixes, and the
  real-path confinement of local files.
* ``buckets``: the S3 bucket-name pattern (pure; RegisterTable checks it too).
* ``sources``: finding the source files (lookup, listing, formats).
* ``readers``: reading sources as Arrow (Parquet, CSV, JSON lines).
* ``read_errors``: what a failed read says, naming the source, never quoting its content.
* ``schema_check``: whether a file's columns fit the table.
* ``registration``: registering a Parquet file in place, without a copy.
* ``writer``: writing rewritten rows as data files in bounded memory.
* ``commit``: the one ``fast_append`` and the outcome it records.
"""
