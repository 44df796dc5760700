"""Adapters: the Iceberg catalog and the object store, each owning its client and health check."""
