"""Per-user behaviour histories and the leave-one-out split on positive ad events.

Histories are grouped with pyarrow (one stable sort by user id, time) and turned into
records one block of users at a time, so a world of 100k+ users never becomes one Python
object per row all at once; only the five behaviour columns are held in memory.

Leave-one-out (§5.1): among a user's *targets* — positive ad events (click, conversion) —
the last is the test target, the one before the validation target, the earlier ones are
train targets. The history of the target at index ``i`` is ``behaviors[:i]``. A conversion
that directly follows a positive event on the same ad (the synthetic funnel: click, then
minutes later its conversion) is the same interaction, not a new target: as a target it
would sit right after its own click and be trivially "predicted" by copying the last ad.
It stays in the history of later targets. ``merge_conversions=False`` counts every event.

Refit (``holdout``): the validation target only has to be held out for the users that
select the model. Given a holdout set (:func:`holdout_users`), every other user's
validation target becomes their last train target, so the model and its opponents learn
from the most recent interaction of most users, as a model retrained on all the data it
has would in production. The test target is never trained on. Test targets are later and
rarer in training than validation targets (amazon-toys: 10 % of test targets occur at most
twice among train targets against 6 % of validation ones; with the refit 5 %), which is
why models lose more from validation to test than selection alone explains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from leadre_model.data.records import POSITIVE_ACTIONS, Action, Behavior, Domain, User
from leadre_model.data.store import read_table

POSITIVE_AD_ACTIONS = frozenset({Action.CLICK, Action.CONVERSION})
_COLUMNS = ["user_id", "ts", "domain", "action", "item_id"]


@dataclass(frozen=True)
class UserHistory:
    """A user and all their behaviours, sorted by time (stable: equal times keep order)."""

    user: User
    behaviors: list[Behavior]

    def __post_init__(self) -> None:
        ts = [b.ts for b in self.behaviors]
        if any(a > b for a, b in pairwise(ts)):
            object.__setattr__(self, "behaviors", sorted(self.behaviors, key=lambda b: b.ts))


@dataclass(frozen=True)
class Split:
    """Indices into ``UserHistory.behaviors`` of the targets of each split."""

    train_targets: list[int]
    valid: int | None
    test: int | None


def is_positive_ad(b: Behavior) -> bool:
    return b.domain is Domain.AD and b.action in POSITIVE_AD_ACTIONS


def target_indices(h: UserHistory, merge_conversions: bool = True) -> list[int]:
    """Indices of the user's positive ad events that count as targets, in time order."""
    out: list[int] = []
    last_ad: str | None = None
    for i, b in enumerate(h.behaviors):
        if not is_positive_ad(b):
            continue
        if not (merge_conversions and b.action is Action.CONVERSION and b.item_id == last_ad):
            out.append(i)
        last_ad = b.item_id
    return out


def leave_one_out(h: UserHistory, merge_conversions: bool = True,
                  holdout: Container[str] | None = None) -> Split:
    """Last target = test, the one before = validation, the rest = train targets. With a
    ``holdout`` set, a user outside it has no validation target: it is a train target
    (the refit, module doc)."""
    t = target_indices(h, merge_conversions)
    if holdout is not None and h.user.user_id not in holdout:
        return Split(train_targets=t[:-1], valid=None, test=t[-1] if t else None)
    return Split(
        train_targets=t[:-2],
        valid=t[-2] if len(t) >= 2 else None,
        test=t[-1] if t else None,
    )


def _user_rank(user_id: str) -> bytes:
    return hashlib.blake2b(user_id.encode(), digest_size=8).digest()


def holdout_users(world: Path, n: int, merge_conversions: bool = True) -> frozenset[str]:
    """The ``n`` users, among those with a validation target, whose validation target stays
    held out in a refit: the smallest hashes of the user id. No seed and no state, so
    training and ``leadre eval`` (LEADRE and every baseline) hold out the same users."""
    if n < 1:
        raise ValueError(f"holdout needs at least one user, not {n}")
    ids = [h.user.user_id for h in iter_user_histories(world, positive_only=True)
           if leave_one_out(h, merge_conversions).valid is not None]
    return frozenset(sorted(ids, key=_user_rank)[:n])


def iter_user_histories(
    world: Path,
    users: Iterable[str] | None = None,
    positive_only: bool = False,
    block_users: int = 4096,
) -> Iterator[UserHistory]:
    """Every user with at least one behaviour (restricted to ``users`` if given), in user-id
    order. Users missing from users.parquet (imported worlds) get an empty profile.

    ``positive_only`` drops impressions before any record is made (~40% of a synthetic
    world's rows): prompts and the split never look at them.
    """
    table = read_table(world, "behaviors", columns=_COLUMNS)
    if users is not None:
        wanted = pa.array(sorted(set(users)), pa.string())
        table = table.filter(pc.is_in(table["user_id"], value_set=wanted))
    if positive_only:
        keep = pa.array(sorted(a.value for a in POSITIVE_ACTIONS), pa.string())
        table = table.filter(pc.is_in(table["action"], value_set=keep))
    if table.num_rows == 0:
        return
    # sort_indices is stable: equal timestamps keep file order (the synthetic funnel order).
    table = table.take(pc.sort_indices(table, [("user_id", "ascending"), ("ts", "ascending")]))
    uid = table["user_id"].combine_chunks()
    n = len(uid)
    changes = pc.not_equal(uid.slice(1), uid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changes) + 1, [n]])
    profiles = _users_table(world)
    for g0 in range(0, len(starts) - 1, block_users):
        g1 = min(g0 + block_users, len(starts) - 1)
        lo, hi = int(starts[g0]), int(starts[g1])
        block = table.slice(lo, hi - lo)
        behaviors = _behaviors(block)
        bounds = (starts[g0 : g1 + 1] - lo).tolist()
        first_ids = [behaviors[b].user_id for b in bounds[:-1]]
        for user, a, b in zip(_profiles(profiles, first_ids), bounds[:-1], bounds[1:]):
            yield UserHistory(user, behaviors[a:b])


def _behaviors(block: pa.Table) -> list[Behavior]:
    # Full validation costs about what model_construct does (~5 µs a row), so keep it.
    cols = [block[c].to_pylist() for c in _COLUMNS]
    return [Behavior(user_id=u, ts=t, domain=d, action=a, item_id=i) for u, t, d, a, i in zip(*cols)]


def _users_table(world: Path) -> pa.Table | None:
    try:
        return read_table(world, "users")
    except FileNotFoundError:
        return None


def _profiles(users: pa.Table | None, user_ids: list[str]) -> list[User]:
    if users is None or users.num_rows == 0:
        return [User(user_id=u) for u in user_ids]
    pos = pc.index_in(pa.array(user_ids, pa.string()), value_set=users["user_id"])
    found = users.take(pc.fill_null(pos, 0)).to_pylist()
    return [
        User.model_validate({k: v for k, v in row.items() if v is not None}) if p is not None
        else User(user_id=u)
        for u, p, row in zip(user_ids, pos.to_pylist(), found)
    ]


__all__ = [
    "POSITIVE_AD_ACTIONS",
    "Split",
    "UserHistory",
    "holdout_users",
    "is_positive_ad",
    "iter_user_histories",
    "leave_one_out",
    "target_indices",
]


def train_item_sequences(
    world: Path, row_of: Mapping[str, int], merge_conversions: bool = True
) -> list[list[int]]:
    """Every user's *training* targets (never validation or test) as rows of ``row_of``,
    in time order: what index-side models (collaborative S-IDs) may learn from without
    seeing a held-out target. Targets outside ``row_of`` are skipped."""
    out: list[list[int]] = []
    for h in iter_user_histories(world, positive_only=True):
        ids = (h.behaviors[i].item_id for i in leave_one_out(h, merge_conversions).train_targets)
        out.append([row_of[a] for a in ids if a in row_of])
    return out
