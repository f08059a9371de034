"""Nearline worker: behaviour stream → ARPU-tiered scheduling → prompt → inference →
versioned list in Redis; and the catalog applier (new ads → S-IDs → every trie)."""
