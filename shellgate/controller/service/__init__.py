"""The gRPC surface: the servicer, one module per resource, error mapping."""
