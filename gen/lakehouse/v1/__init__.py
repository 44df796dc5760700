"""Generated gRPC stubs of the lakehouse.v1 contract (`make gen`; do not edit)."""
