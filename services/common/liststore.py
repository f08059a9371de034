"""A user's stored list as readers see it, whatever format it was written in: format 3 in
the ``l`` / ``adv`` string keys (numbers resolved through the id registry), or formats
1-2 in the old ``list`` hash (still read, never written).

:class:`ListView` is a plain dataclass, not a pydantic model: the Mixer builds one per
request. The sync :func:`read_list` is for tools and tests; the user store has the async
twin of the same steps (:meth:`services.user_server.store.UserStore.get_list`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import redis

from services.common import keys
from services.common.idregistry import Names, refresh_sync
from services.common.listcodec import Packed, StoredList, decode_list, unpack


class Entry(NamedTuple):
    ad_id: str  # an advertiser id in ``ListView.advertisers``
    score: float


@dataclass(frozen=True)
class ListView:
    version: int
    updated_ms: int
    model_version: str
    ads: list[Entry]
    advertisers: list[Entry]


def view_of(stored: StoredList) -> ListView:
    """A list of format 1-2."""
    return ListView(stored.version, stored.updated_ms, stored.model_version,
                    [Entry(a.ad_id, a.score) for a in stored.ads],
                    [Entry(a.ad_id, a.score) for a in stored.advertisers])


def unpack_parts(blob: bytes, adv_blob: bytes | None) -> list[tuple[str, Packed]]:
    """(namespace, list) of the ads and, when there, of the advertiser priors written with
    them (ValueError on a malformed blob)."""
    parts = [("ad", unpack(blob))]
    if adv_blob:
        adv = unpack(adv_blob)
        if adv.version == parts[0][1].version:
            parts.append(("adv", adv))
    return parts


def stale_namespaces(names: Names, parts: Sequence[tuple[str, Packed]]) -> list[str]:
    """Namespaces ``names`` must refresh before it can resolve ``parts``."""
    out: set[str] = set()
    for ns, p in parts:
        if names.epoch != p.epoch:
            out |= {"model", ns}
        else:
            if not names.covers("model", [p.model]):
                out.add("model")
            if not names.covers(ns, p.ids):
                out.add(ns)
    return sorted(out)


def resolve(names: Names, parts: Sequence[tuple[str, Packed]]) -> ListView | None:
    """The view of up-to-date ``parts``; None when they belong to another registry epoch
    (or name numbers the registry does not have): the caller treats that as a miss."""
    if stale_namespaces(names, parts):
        return None
    (_, p), *rest = parts
    ads = [Entry(*e) for e in zip(names.lookup("ad", p.ids), p.scores)]
    advertisers = ([Entry(*e) for e in zip(names.lookup("adv", rest[0][1].ids), rest[0][1].scores)]
                   if rest else [])
    return ListView(p.version, p.updated_ms, names.lookup("model", [p.model])[0], ads, advertisers)


def read_list(r: redis.Redis, user_id: str, names: Names | None = None) -> ListView | None:
    """The user's list in any format (``r`` returns bytes); None: none, expired or of
    another registry epoch."""
    names = names if names is not None else Names()
    blob, adv = r.get(keys.user_key(user_id, "l")), r.get(keys.user_key(user_id, "adv"))
    if blob is None:
        old = r.hget(keys.user_key(user_id, "list"), "d")
        return view_of(decode_list(old)) if old else None
    parts = unpack_parts(blob, adv)
    for ns in stale_namespaces(names, parts):
        refresh_sync(r, names, ns)
    return resolve(names, parts)
