"""The four gRPC services: thin servers over the `shortlist` package."""
