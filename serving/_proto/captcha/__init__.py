"""Generated gRPC stubs."""
