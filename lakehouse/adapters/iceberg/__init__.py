"""Iceberg tables through pyiceberg: the catalog adapter and what it is made of.

* ``catalog``: ``IcebergCatalog``, the ``CatalogPort`` implementation.
* ``conversions``: pyiceberg's tables, snapshots and namespace properties as domain values.
* ``errors``: pyiceberg, catalog and storage errors as domain errors, without server paths.
* ``fast_paths``: raw SQL on the SQL catalog's own tables.
* ``registration``: what RegisterTable refuses.
* ``cache``: loaded tables' lazy attributes, filled once.
* ``ingest``: exactly-once appends (writer offsets, request ids).
* ``scan`` and ``readahead``: reads in bounded memory.
* ``updates``: schema, partition, sort order and property changes.
* ``table_jobs``: ``IcebergTableJobs``, the ``TableJobsPort`` implementation, running:
  ``compaction``, ``expiry`` (snapshot expiry), ``orphans`` (orphan file removal), and
  ``references`` (which files the metadata references, deleting files) that they share.
* ``locations``: table locations.
"""
