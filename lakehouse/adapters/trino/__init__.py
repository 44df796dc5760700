"""The Trino SQL engine: SQL jobs with engine TRINO run on a Trino cluster.

* ``engine``: ``TrinoEngine``: validating and running statements, health, error mapping.
* ``client``: the typed part of Trino's client the engine uses, and its TLS session.
* ``running_query``: one query tied to its job (progress out, cancellation in).
* ``results``: Trino's types and values as Arrow, and the preview.
"""
