"""Client helpers for the lakehouse.v1 API, shipped with the generated stubs.

``lakehouse.client.arrow`` turns ``ReadRows`` streams into pyarrow tables and Arrow tables into
ingest requests. It needs pyarrow (``pip install './gen[arrow]'``); importing this package
alone does not.
"""
