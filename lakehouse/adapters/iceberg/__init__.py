"""Iceberg tables through pyiceberg: the catalog adapter and what it is made of.

``catalog`` (the ``CatalogPort`` implementation), ``conversions`` (pyiceberg objects to domain
values), ``errors`` (pyiceberg and storage errors to domain errors), ``fast_paths`` (raw SQL on
the SQL catalog's own tables), ``registration`` (what RegisterTable refuses), ``cache``
(loaded tables' lazy attributes), ``ingest`` (exactly-once appends), ``scan`` and
``readahead`` (bounded-memory reads), ``updates`` (schema, partition, sort and property
changes), ``maintenance`` (compaction, expiry, orphan removal), ``locations`` (table
locations).
"""
