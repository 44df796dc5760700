"""The embedded DuckDB engine of SQL jobs, one module per job.

* ``engine``: runs one statement (``run_statement``): the query, its errors, its commit.
* ``statements``: the statement rules, checked with DuckDB's parser (``check_statement``).
* ``parse_tree``: DuckDB's parse trees and tokens: the tables and functions a statement names.
* ``row_statements``: DELETE and UPDATE split into their target, WHERE and SET.
* ``connection``: the locked-down, in-memory DuckDB connection.
* ``scan_source``: the Iceberg scan source DuckDB reads, streamed through pyiceberg.
* ``pushdown``: DuckDB's pushed-down predicates as pyiceberg row filters.
* ``progress``: the query's progress, published through the job's context.
* ``preview``: the result's row count and first rows.
* ``storable``: result columns as an Iceberg table can store them.
* ``writes``: the result's data files, streamed and undone unless committed.
* ``earlier_attempts``: what an earlier attempt of the same job committed.
* ``row_changes``: DELETE and UPDATE, as matchers of the copy-on-write engine.
"""
