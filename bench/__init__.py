"""`make bench`: the benchmark harness of the lakehouse service (see bench/README.md).

Run it as ``python -m bench [--quick] [--backend embedded|postgres_s3]``.
"""
