"""Numbered ids shared by the list writer (nearline worker) and every list reader (mixer,
user server), so a stored list holds small integers instead of id strings
(:mod:`services.common.listcodec`, format 3).

One registry per namespace (``ad``, ``adv``: advertisers, ``model``: model versions), in
Redis (:func:`services.common.keys.id_keys`): a hash ``string -> number`` and a list whose
index is the number. Numbers are handed out by one Lua script, append-only: a number never
changes meaning, so a list keeps its meaning for as long as it lives. A reader copies a
namespace's names list once and then fetches only the numbers it has not seen
(``LRANGE from len``).

The registry's **epoch** (``keys.ID_EPOCH``: a random number set when the registry is first
used) is written into every list. If the registry were ever deleted while lists survive
(a partial flush), new numbers could mean other ids: readers compare the epoch and treat a
list of another epoch as a miss instead of misreading it. ``flush_leadre_keys`` deletes the
lists with the registry, so after a re-seed this does not happen in practice.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import redis

from services.common import keys

NAMESPACES = ("ad", "adv", "model")

# KEYS: epoch, then per namespace its hash (string -> number) and list (number -> string).
# ARGV: epoch candidate, then per namespace a count and that many strings.
# Returns {epoch, the number of each string, in order}.
ASSIGN_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local out = {tonumber(redis.call('GET', KEYS[1]))}
local a = 2
for k = 2, #KEYS, 2 do
  local count = tonumber(ARGV[a])
  for i = a + 1, a + count do
    local n = redis.call('HGET', KEYS[k], ARGV[i])
    if not n then
      n = redis.call('RPUSH', KEYS[k + 1], ARGV[i]) - 1
      redis.call('HSET', KEYS[k], ARGV[i], n)
    end
    out[#out + 1] = tonumber(n)
  end
  a = a + count + 1
end
return out
"""


def _check(ns: str) -> str:
    if ns not in NAMESPACES:
        raise ValueError(f"unknown id namespace {ns!r} (known: {', '.join(NAMESPACES)})")
    return ns


class IdRegistry:
    """The writer's side (sync client): numbers for strings, new ones assigned."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._assign = r.register_script(ASSIGN_LUA)

    def assign(self, strings: Mapping[str, Sequence[str]]) -> tuple[int, dict[str, list[int]]]:
        """(epoch, the number of each string per namespace), in one round trip; strings
        not numbered yet get the next numbers of their namespace."""
        names: list[str] = [keys.ID_EPOCH]
        args: list[str | int] = [secrets.randbelow(2**14 - 1) + 1]
        for ns, items in strings.items():
            names += keys.id_keys(_check(ns))
            args += [len(items), *items]
        epoch, *nums = self._assign(keys=names, args=args)
        out, at = {}, 0
        for ns, items in strings.items():
            out[ns] = [int(n) for n in nums[at:at + len(items)]]
            at += len(items)
        return int(epoch), out


class Names:
    """A reader's copy of the registry (number -> string per namespace): grows only. Feed
    it with :meth:`extend` after reading ``LRANGE names len(self.of(ns)) -1``."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self._names: dict[str, list[str]] = {ns: [] for ns in NAMESPACES}

    def of(self, ns: str) -> list[str]:
        return self._names[ns]

    def covers(self, ns: str, nums: Sequence[int]) -> bool:
        return not nums or max(nums) < len(self._names[ns])

    def reset(self, epoch: int | None) -> None:
        """A registry of another epoch: forget every copied name."""
        self.epoch = epoch
        for names in self._names.values():
            names.clear()

    def extend(self, epoch: int | None, ns: str, start: int, new: Sequence[str | bytes]) -> None:
        if epoch != self.epoch:
            self.reset(epoch)
        names = self._names[ns]
        if start == len(names):  # a concurrent refresh may have extended it already
            names.extend(s.decode() if isinstance(s, bytes) else s for s in new)

    def lookup(self, ns: str, nums: Sequence[int]) -> list[str]:
        """Strings of numbers :meth:`covers` said are known."""
        names = self._names[ns]
        return [names[n] for n in nums]


def parse_epoch(raw: str | bytes | None) -> int | None:
    return int(raw) if raw is not None else None


def refresh_sync(r: redis.Redis, names: Names, ns: str) -> None:
    """Bring ``names`` up to date for ``ns`` (one round trip; sync client)."""
    start = len(names.of(ns))
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.ID_EPOCH)
    pipe.lrange(keys.id_keys(ns)[1], start, -1)
    epoch, new = pipe.execute()
    epoch = parse_epoch(epoch)
    if epoch != names.epoch:  # another registry: copy it from the start
        names.reset(epoch)
        new, start = r.lrange(keys.id_keys(ns)[1], 0, -1), 0
    names.extend(epoch, ns, start, new)


async def refresh_async(r: object, names: Names, ns: str) -> None:
    """The same with an asyncio client (``redis.asyncio``)."""
    start = len(names.of(ns))
    pipe = r.pipeline(transaction=False)  # type: ignore[attr-defined]
    pipe.get(keys.ID_EPOCH)
    pipe.lrange(keys.id_keys(ns)[1], start, -1)
    epoch, new = await pipe.execute()
    epoch = parse_epoch(epoch)
    if epoch != names.epoch:
        names.reset(epoch)
        new, start = await r.lrange(keys.id_keys(ns)[1], 0, -1), 0  # type: ignore[attr-defined]
    names.extend(epoch, ns, start, new)
