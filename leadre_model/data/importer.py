"""Generic import format: bring your own catalog and behaviour log as CSV files.

Three files (full description with an example in ``docs/import_format.md``):

* **items** (header required): ``item_id,name`` plus optional ``domain`` (ad|content,
  default ad), ``product_type`` (default "unknown"), ``category_l1`` (default "unknown"),
  ``category_l2`` (default: category_l1), ``attributes`` (``|``-separated, default none),
  ``advertiser_id`` (default: the item id), ``ecpm`` (default 0), ``bid`` (default 0),
  ``status`` (active|paused, default active) and, for content rows only, ``spu``.
  An ad row becomes an :class:`Ad`; a content row becomes a :class:`ContentItem`
  (name → title, category_l1 → category).
* **interactions** (header optional): ``user,item,ts[,action[,domain]]``; ``ts`` is unix
  seconds, a position, or an ISO-8601 date-time; action defaults to click, domain to ad.
  Every item must be an item of that domain in the items file.
* **users** (optional, header required): ``user_id`` plus any profile column of
  :class:`User`. Users that only appear in interactions get an empty profile.

An empty cell means "not given" (the default applies). Every row is validated through the
pydantic records; all bad rows are reported at once as ``file:line: reason`` (line 1 is the
header) and nothing is written, not even a directory. Tables are staged next to the output
and moved into it only when every row passed (:class:`leadre_model.data.store.WorldWriter`, shared by all loaders).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from leadre_model.data.errors import ErrorCollector, validation_reason
from leadre_model.data.records import Ad, Behavior, ContentItem, Domain, User
from leadre_model.data.store import WorldWriter
from leadre_model.progress import bar

FORMAT = "leadre-csv/1"
ATTRIBUTE_SEP = "|"
AD_ONLY = ("product_type", "category_l2", "attributes", "advertiser_id", "ecpm", "bid", "status")
ITEM_COLUMNS = ("item_id", "name", "domain", "category_l1", *AD_ONLY, "spu")
USER_COLUMNS = tuple(User.model_fields)
INTERACTION_COLUMNS = ("user", "item", "ts", "action", "domain")
# Header names accepted in the interactions file, and the column each one means.
INTERACTION_ALIASES = {
    **dict.fromkeys(("user", "user_id"), "user"),
    **dict.fromkeys(("item", "item_id"), "item"),
    **dict.fromkeys(("ts", "timestamp", "time", "position"), "ts"),
    "action": "action",
    "domain": "domain",
}


def read_csv(path: Path, errors: ErrorCollector) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, cells)`` for every non-blank CSV record; line is where the record starts.

    Undecodable bytes are reported at their line and end the file.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        line = 1
        try:
            for cells in reader:
                if cells and any(c.strip() for c in cells):
                    yield line, [c.strip() for c in cells]
                line = reader.line_num + 1
        except UnicodeDecodeError as exc:
            errors.add(path, reader.line_num + 1, f"not UTF-8 text ({exc.reason})")
        except csv.Error as exc:
            errors.add(path, reader.line_num, f"malformed CSV ({exc})")


def _header(
    path: Path,
    cells: list[str],
    allowed: tuple[str, ...],
    required: tuple[str, ...],
    line: int,
    errors: ErrorCollector,
) -> bool:
    names = [c.lower() for c in cells]
    ok = True
    for name in names:
        if name not in allowed:
            errors.add(path, line, f"unknown column {name!r}; allowed: {', '.join(allowed)}")
            ok = False
    for name in required:
        if name not in names:
            errors.add(path, line, f"missing required column {name!r}")
            ok = False
    if len(set(names)) != len(names):
        errors.add(path, line, "duplicate column names in the header")
        ok = False
    return ok


def _cells(
    header: list[str], cells: list[str], path: Path, line: int, errors: ErrorCollector
) -> dict[str, str] | None:
    if len(cells) != len(header):
        errors.add(path, line, f"expected {len(header)} cells (as in the header), got {len(cells)}")
        return None
    return {k: v for k, v in zip(header, cells) if v != ""}


def _headed_rows(
    path: Path, allowed: tuple[str, ...], required: tuple[str, ...], errors: ErrorCollector
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file whose first line is a header, as ``{column: cell}`` (empty cells
    left out); header and cell-count problems are reported, not yielded."""
    rows = read_csv(path, errors)
    first = next(rows, None)
    if first is None:
        errors.add(path, 1, "empty file: a header line is required")
        return
    if not _header(path, first[1], allowed, required, first[0], errors):
        return
    header = [c.lower() for c in first[1]]
    for line, cells in rows:
        row = _cells(header, cells, path, line, errors)
        if row is not None:
            yield line, row


def _item_record(row: dict[str, str]) -> Ad | ContentItem:
    """Build (and validate) the record for one items row; raises ValueError/ValidationError."""
    domain = row.get("domain", Domain.AD.value).lower()
    if domain == Domain.CONTENT.value:
        extra = [c for c in AD_ONLY if c in row]
        if extra:
            raise ValueError(f"column(s) {', '.join(extra)} apply only to ads (domain is content)")
        return ContentItem(
            content_id=row.get("item_id", ""),
            title=row.get("name", ""),
            category=row.get("category_l1", "unknown"),
            spu=row.get("spu"),
        )
    if domain != Domain.AD.value:
        raise ValueError(f"domain: {domain!r} is not one of ad, content")
    if "spu" in row:
        raise ValueError("column spu applies only to content items")
    item_id = row.get("item_id", "")
    l1 = row.get("category_l1", "unknown")
    attrs = [a.strip() for a in row.get("attributes", "").split(ATTRIBUTE_SEP) if a.strip()]
    return Ad(
        ad_id=item_id,
        name=row.get("name", ""),
        product_type=row.get("product_type", "unknown"),
        category_l1=l1,
        category_l2=row.get("category_l2", l1),
        attributes=attrs,
        advertiser_id=row.get("advertiser_id", item_id),
        ecpm=row.get("ecpm", 0),
        bid=row.get("bid", 0),
        status=row.get("status", "active").lower(),
    )


_ITEM_RENAME = {
    "ad_id": "item_id",
    "content_id": "item_id",
    "title": "name",
    "category": "category_l1",
}
_BEHAVIOR_RENAME = {"user_id": "user", "item_id": "item"}


def _validated(
    build: Callable[[dict[str, str]], Any],
    row: dict[str, str],
    path: Path,
    line: int,
    errors: ErrorCollector,
    rename: Mapping[str, str],
) -> Any | None:
    """``build(row)``, or None after reporting why the row is bad."""
    try:
        return build(row)
    except ValidationError as exc:
        errors.add(path, line, validation_reason(exc, rename))
    except ValueError as exc:
        errors.add(path, line, str(exc))
    return None


def _parse_ts(text: str) -> int | str:
    """Integers pass through (pydantic checks the sign); ISO-8601 becomes unix seconds (UTC
    when no zone is given); anything else is returned for pydantic to reject."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def _import_items(
    path: Path, world: WorldWriter, errors: ErrorCollector, progress: bool = False
) -> dict[str, Domain | int]:
    """Write the items; return item id -> its domain, or -> the line of its bad row."""
    kinds: dict[str, Domain | int] = {}
    first_line: dict[str, int] = {}
    rows = _headed_rows(path, ITEM_COLUMNS, ("item_id", "name"), errors)
    for line, row in bar(rows, desc=path.name, unit="row", enabled=progress):
        rec = _validated(_item_record, row, path, line, errors, _ITEM_RENAME)
        if rec is None:
            first_line.setdefault(row.get("item_id", ""), line)
            continue
        item_id = rec.ad_id if isinstance(rec, Ad) else rec.content_id
        if item_id in first_line:
            errors.add(
                path, line, f"duplicate item_id {item_id!r} (first on line {first_line[item_id]})"
            )
            continue
        first_line[item_id] = line
        kinds[item_id] = Domain.AD if isinstance(rec, Ad) else Domain.CONTENT
        world.add("ads" if isinstance(rec, Ad) else "content", rec)
    # Items whose own row was bad: interactions naming them point back to that line.
    kinds.update({item_id: line for item_id, line in first_line.items() if item_id not in kinds})
    return kinds


def _import_users(
    path: Path, world: WorldWriter, errors: ErrorCollector, progress: bool = False
) -> set[str]:
    seen: dict[str, int] = {}
    rows = _headed_rows(path, USER_COLUMNS, ("user_id",), errors)
    for line, row in bar(rows, desc=path.name, unit="row", enabled=progress):
        user = _validated(lambda r: User(**r), row, path, line, errors, {})
        if user is None:
            continue
        if user.user_id in seen:
            errors.add(
                path,
                line,
                f"duplicate user_id {user.user_id!r} (first on line {seen[user.user_id]})",
            )
            continue
        seen[user.user_id] = line
        world.add("users", user)
    return set(seen)


def _behavior(row: dict[str, str]) -> Behavior:
    return Behavior(
        user_id=row.get("user", ""),
        item_id=row.get("item", ""),
        ts=_parse_ts(row.get("ts", "")),
        action=row.get("action", "click").lower(),
        domain=row.get("domain", "ad").lower(),
    )


def _interaction_header(cells: list[str]) -> bool:
    """A first line is a header when its first two cells name the user and item columns."""
    names = [c.lower() for c in cells[:2]]
    return (
        len(names) == 2
        and INTERACTION_ALIASES.get(names[0]) == "user"
        and INTERACTION_ALIASES.get(names[1]) == "item"
    )


def _import_interactions(
    path: Path,
    items: Mapping[str, Domain | int],
    items_name: str,
    world: WorldWriter,
    errors: ErrorCollector,
    progress: bool = False,
) -> set[str]:
    users: set[str] = set()
    header: list[str] | None = None
    rows = bar(read_csv(path, errors), desc=path.name, unit="row", enabled=progress)
    for n, (line, cells) in enumerate(rows):
        if n == 0 and _interaction_header(cells):
            header = [INTERACTION_ALIASES.get(c.lower(), c.lower()) for c in cells]
            if not _header(path, header, INTERACTION_COLUMNS, ("user", "item", "ts"), line, errors):
                return users
            continue
        if header is None and not 3 <= len(cells) <= 5:
            errors.add(
                path,
                line,
                f"expected 3 to 5 cells (user,item,ts[,action[,domain]]), got {len(cells)}",
            )
            continue
        row = _cells(header or list(INTERACTION_COLUMNS[: len(cells)]), cells, path, line, errors)
        if row is None:
            continue
        beh = _validated(_behavior, row, path, line, errors, _BEHAVIOR_RENAME)
        if beh is None:
            continue
        known = items.get(beh.item_id)
        if known is None:
            errors.add(path, line, f"item {beh.item_id!r} is not in {items_name}")
            continue
        if isinstance(known, int):
            errors.add(
                path, line, f"item {beh.item_id!r} has a bad row in {items_name} (line {known})"
            )
            continue
        if known is not beh.domain:
            errors.add(
                path,
                line,
                f"item {beh.item_id!r} is a {known.value} item in {items_name}, "
                f"not {beh.domain.value}",
            )
            continue
        users.add(beh.user_id)
        world.add("behaviors", beh)
    return users


def import_world(
    items: Path, interactions: Path, users: Path | None, out: Path, progress: bool = False
) -> dict:
    """Validate the CSV files and write the world directory ``out``; return its manifest.
    ``progress``: one counting bar per file (a line per file in a log).

    Raises :class:`~leadre_model.data.errors.DataValidationError` listing every bad row as
    ``file:line: reason``; in that case nothing is written to ``out``.
    """
    items, interactions = Path(items), Path(interactions)
    users = Path(users) if users is not None else None
    for p in (items, interactions, users):
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    errors = ErrorCollector()
    with WorldWriter(out) as world:
        kinds = _import_items(items, world, errors, progress)
        profiled = _import_users(users, world, errors, progress) if users is not None else set()
        active = _import_interactions(interactions, kinds, items.name, world, errors, progress)
        errors.raise_if_any()
        for user_id in sorted(active - profiled):
            world.add("users", User(user_id=user_id))
        world.manifest = {
            "source": "import",
            "format": FORMAT,
            "inputs": {
                "items": str(items.resolve()),
                "interactions": str(interactions.resolve()),
                "users": str(users.resolve()) if users is not None else None,
            },
            "users_without_profile": len(active - profiled),
        }
    return world.manifest
