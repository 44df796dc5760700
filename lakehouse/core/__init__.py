"""Domain logic: namespaces, tables, ingest and jobs, written against the adapters' ports."""
