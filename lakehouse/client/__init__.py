"""Client helpers for the lakehouse.v1 API, shipped with the generated stubs.

``lakehouse.client.arrow`` turns ``ReadRows`` streams into pyarrow tables and Arrow tables into
ingest requests; ``lakehouse.client.changes`` turns change streams (CDC) into rows for UPSERT
writes and builds ``DeleteRows`` requests. Both need pyarrow (``pip install './gen[arrow]'``);
importing this package alone does not.
"""
