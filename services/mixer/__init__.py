"""Mixer: the public retrieval API (HTTP + gRPC) — LEADRE branch + fallback branch, and
ranking features (§5.3)."""
