"""What every stage shares: typed errors as gRPC statuses, the token check, tensors on the wire, metrics."""
