"""Decoding and validating ingest payloads against a table's Iceberg schema (no I/O).

Two inputs, one result (``problems.DecodedRows``): the valid rows as an Arrow table conformed
exactly to the table's Arrow schema (what pyiceberg's ``Table.append`` expects), the request
index of each valid row, and for the invalid rows one ``RowProblem`` each plus their original
payload as text, for the dead-letter table.

* ``problems``: the result and the row problems.
* ``arrow_size``: Arrow IPC sizes read from the message headers, before any body is decoded.
* ``arrow_read``: Arrow IPC payloads read, corrupt input refused, dictionaries charged.
* ``arrow_conform``: Arrow rows conformed to the table's schema with vectorized casts.
* ``json_rows``: JSON rows decoded against the table's schema.
"""
