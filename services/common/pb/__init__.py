"""Generated gRPC stubs (see services/common/proto_gen.py)."""
