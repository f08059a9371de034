"""Versioned list writes: a Lua script compares the list's version (the user state
sequence number it was computed from) with the last one written, so an older result —
a slow instance, a reclaimed duplicate — never replaces a newer list.

Lists are written in the compact format 3 (:mod:`services.common.listcodec`): ad ids,
advertiser ids and the model version numbered by the id registry (one round trip), the ads
in the ``l`` key with quantised scores, the advertiser priors with exact scores in their
own ``adv`` key (the Mixer's retrieve reads only ``l``; ranking uses the priors as
probabilities)."""

from __future__ import annotations

import math
import time

import redis

from services.common.contracts import Retrieval, RetrievedAd
from services.common.idregistry import IdRegistry
from services.common.keys import user_key
from services.common.listcodec import Packed, pack
from services.common.userstate import WRITE_PACKED_LUA


class ListWriter:
    def __init__(self, r: redis.Redis, ttl_s: int, list_size: int) -> None:
        self.r, self.ttl_ms, self.list_size = r, ttl_s * 1000, list_size
        self.ids = IdRegistry(r)
        self._script = r.register_script(WRITE_PACKED_LUA)

    def write(self, user_id: str, version: int, result: Retrieval) -> bool:
        """True when written; False when a list of this or a newer version is there."""
        def real(items: list[RetrievedAd]) -> list[RetrievedAd]:  # drop the tensor padding
            return [a for a in items if a.ad_id and math.isfinite(a.score)][: self.list_size]

        ads, advertisers = real(result.ads), real(result.advertisers)
        epoch, nums = self.ids.assign({"model": [result.model_version[:255]],
                                       "ad": [a.ad_id for a in ads],
                                       "adv": [a.ad_id for a in advertisers]})
        now = int(time.time() * 1000)

        def packed(ns: str, items: list[RetrievedAd]) -> bytes:  # priors: exact scores
            return pack(Packed(epoch, version, now, nums["model"][0], nums[ns],
                               [a.score for a in items]), exact=ns == "adv")

        done = self._script(keys=[user_key(user_id, "l"), user_key(user_id, "lv"),
                                  user_key(user_id, "adv"), user_key(user_id, "list")],
                            args=[version, packed("ad", ads), self.ttl_ms,
                                  packed("adv", advertisers) if advertisers else b""])
        return bool(done)
