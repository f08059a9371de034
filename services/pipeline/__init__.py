"""Operational pipelines: the daily training cycle (§4.4.1 "Training")."""
