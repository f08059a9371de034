"""Loader for Amazon Toys and Games 5-core (``../shared/data/amazon-toys``).

Files: ``sequences.txt`` (``user item item ...``, time order), ``item_text.txt``
(``item short text``) and ``item_attributes.json`` (item → integer attribute ids). The
mapping, also in ``docs/import_format.md``:

* **Ads**, one per line of item_text.txt: ``ad_id`` = the ASIN; name = the short text
  (at most 512 characters); product type "toys and games"; ecpm = bid = 0 (no prices).
* **Attribute ids**: the file comes from S3-Rec's preprocessing, which lists the item's
  **brand first** (when it has one) and then its category paths without the top-level
  "Toys & Games" (checked on the data: position 0 takes 659 distinct ids that almost never
  occur elsewhere; position 1 is id 2 for 11,921 of 11,924 items, positions 2 and 3 take 19 and
  166 values). So: advertiser_id = ``brand_<first id>`` (the brand stands in for the
  advertiser), except first id 1 (2,375 items of unrelated makers, e.g. Disney slippers, IKEA
  trains, Fisher-Price toys that elsewhere carry Fisher-Price's id: the empty brand string),
  which becomes ``adv_unknown``; the category path is the remaining ids, deduplicated, with
  the shared root (the most common second id, 2) dropped when something more specific
  follows; category_l1/l2 =
  ``cat_<id>`` of the path's first two ids (l2 = l1 when the path has one id); attributes =
  ``cat_<id>`` of the rest of the path (at most 32). An item without attribute ids gets
  categories "unknown" and advertiser ``adv_unknown``.
* **Users**: one per line of sequences.txt, no profile. **Behaviours**: ad-domain clicks,
  ``ts`` = position in the sequence (0 = oldest).

Errors reported as ``file:line: reason``: a sequence item missing from item_text.txt, a
duplicate user or item, a line without items or text, bad ids; JSON syntax errors at their
line, and values that are not lists of integers at the line of their key.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from leadre_model.data.errors import ErrorCollector, validation_reason
from leadre_model.data.records import Action, Ad, Behavior, Domain, User
from leadre_model.data.store import WorldWriter
from leadre_model.progress import bar

SEQUENCES = "sequences.txt"
ITEM_TEXT = "item_text.txt"
ATTRIBUTES = "item_attributes.json"
MAX_NAME = 512
MAX_ATTRIBUTES = 32
UNKNOWN_ADVERTISER = "adv_unknown"
NO_BRAND_ID = 1  # S3-Rec's id for the empty brand string (see the module docstring)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if text:
                yield line, text


def _read_attributes(path: Path, errors: ErrorCollector) -> dict[str, list[int]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.add(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")
        return {}
    if not isinstance(data, dict):
        errors.add(
            path, 1, f"expected a JSON object of item -> [attribute ids], got {type(data).__name__}"
        )
        return {}
    attributes: dict[str, list[int]] = {}
    for item, ids in data.items():
        if isinstance(ids, list) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in ids
        ):
            attributes[item] = ids
        else:
            at = text.find(json.dumps(item))
            line = text.count("\n", 0, at) + 1 if at >= 0 else 1
            errors.add(path, line, f"item {item!r}: attributes must be a list of integers")
    return attributes


def _read_texts(path: Path, errors: ErrorCollector) -> dict[str, tuple[int, str]]:
    texts: dict[str, tuple[int, str]] = {}
    for line, text in _lines(path):
        item, _, name = text.partition(" ")
        name = name.strip()
        if not name:
            errors.add(path, line, f"item {item!r} has no text")
        elif item in texts:
            errors.add(path, line, f"duplicate item {item!r} (first on line {texts[item][0]})")
        else:
            texts[item] = (line, name[:MAX_NAME])
    return texts


def category_root(attributes: dict[str, list[int]]) -> int | None:
    """The id shared by (almost) all category paths: the most common second attribute id."""
    counts = Counter(ids[1] for ids in attributes.values() if len(ids) > 1)
    return counts.most_common(1)[0][0] if counts else None


def item_ad(item: str, name: str, ids: list[int], root: int | None) -> Ad:
    """The Ad for one item given its attribute ids (brand first, then categories)."""
    path = list(dict.fromkeys(ids[1:]))
    if len(path) > 1 and path[0] == root:
        path = path[1:]
    cats = [f"cat_{c}" for c in path]
    l1 = cats[0] if cats else "unknown"
    return Ad(
        ad_id=item,
        name=name,
        product_type="toys and games",
        category_l1=l1,
        category_l2=cats[1] if len(cats) > 1 else l1,
        attributes=cats[2:][:MAX_ATTRIBUTES],
        advertiser_id=f"brand_{ids[0]}" if ids and ids[0] != NO_BRAND_ID else UNKNOWN_ADVERTISER,
        ecpm=0.0,
        bid=0.0,
    )


def load_amazon(src: Path, out: Path, progress: bool = False) -> dict:
    """Load the three files under ``src`` into the world ``out``; return the manifest
    (``progress``: a counting bar for the user sequences, a line in a log).

    Raises :class:`~leadre_model.data.errors.DataValidationError` (nothing written) when a
    line is bad.
    """
    src = Path(src)
    paths = {name: src / name for name in (SEQUENCES, ITEM_TEXT, ATTRIBUTES)}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    errors = ErrorCollector()
    attributes = _read_attributes(paths[ATTRIBUTES], errors)
    texts = _read_texts(paths[ITEM_TEXT], errors)
    root = category_root(attributes)

    ads: list[Ad] = []
    for item, (line, name) in texts.items():
        try:
            ads.append(item_ad(item, name, attributes.get(item, []), root))
        except ValidationError as exc:
            errors.add(
                paths[ITEM_TEXT], line, validation_reason(exc, {"ad_id": "item", "name": "text"})
            )

    seq_path = paths[SEQUENCES]
    users: dict[str, int] = {}
    profiles: list[User] = []
    behaviours: list[Behavior] = []
    for line, text in bar(_lines(seq_path), desc=seq_path.name, unit="user", enabled=progress):
        user, *items = text.split()
        if user in users:
            errors.add(seq_path, line, f"duplicate user {user!r} (first on line {users[user]})")
            continue
        users[user] = line
        if not items:
            errors.add(seq_path, line, f"user {user!r} has no items")
            continue
        missing = [i for i in items if i not in texts]
        if missing:
            errors.add(
                seq_path,
                line,
                f"item(s) not in {ITEM_TEXT}: {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            )
            continue
        try:
            profiles.append(User(user_id=user))
            behaviours.extend(
                Behavior(user_id=user, ts=ts, domain=Domain.AD, action=Action.CLICK, item_id=item)
                for ts, item in enumerate(items)
            )
        except ValidationError as exc:
            errors.add(
                seq_path, line, validation_reason(exc, {"user_id": "user", "item_id": "item"})
            )
    errors.raise_if_any()

    with WorldWriter(out) as world:
        for ad in ads:
            world.add("ads", ad)
        for profile in profiles:
            world.add("users", profile)
        for beh in behaviours:
            world.add("behaviors", beh)
        world.manifest = {
            "source": "amazon-toys",
            "inputs": {name: str(p.resolve()) for name, p in paths.items()},
            "advertisers": len({a.advertiser_id for a in ads}),
            "items_without_attributes": sum(1 for item in texts if item not in attributes),
            "category_root_dropped": f"cat_{root}" if root is not None else None,
            "ts": "position in the user's sequence (no timestamps in the source)",
        }
    return world.manifest
