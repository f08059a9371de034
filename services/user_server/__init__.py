"""User Server: precomputed lists from Redis, fallback on a miss, behaviour and ad-feature
updates (gRPC)."""
