"""The Arrow Flight data plane: ``do_get`` reads and ``do_put`` appends beside the gRPC API."""
