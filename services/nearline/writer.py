"""Versioned list writes: a Lua script compares the list's version (the user state
sequence number it was computed from) with the last one written, so an older result —
a slow instance, a reclaimed duplicate — never replaces a newer list."""

from __future__ import annotations

import math
import time

import redis

from services.common.contracts import Retrieval, RetrievedAd
from services.common.keys import user_key
from services.common.listcodec import StoredList, encode_list
from services.common.userstate import WRITE_LIST_LUA


class ListWriter:
    def __init__(self, r: redis.Redis, ttl_s: int, list_size: int) -> None:
        self.r, self.ttl_ms, self.list_size = r, ttl_s * 1000, list_size
        self._script = r.register_script(WRITE_LIST_LUA)

    def write(self, user_id: str, version: int, result: Retrieval) -> bool:
        """True when written; False when a list of this or a newer version is there."""
        def real(items: list[RetrievedAd]) -> list[RetrievedAd]:  # drop the tensor padding
            return [a for a in items if a.ad_id and math.isfinite(a.score)][: self.list_size]

        stored = StoredList(version=version, updated_ms=int(time.time() * 1000),
                            model_version=result.model_version[:255],
                            ads=real(result.ads), advertisers=real(result.advertisers))
        done = self._script(keys=[user_key(user_id, "list"), user_key(user_id, "lv")],
                            args=[version, encode_list(stored), self.ttl_ms])
        return bool(done)
