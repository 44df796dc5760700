"""Transport: the grpc.aio server, interceptors, health, reflection and the sidecar HTTP app."""
