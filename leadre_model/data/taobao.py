"""Loader for the Taobao display-ad sample (``../shared/data/taobao-ad-sample``).

One row = one ad impression, 267 comma-separated columns (layout in the data README;
all integers except the normalised price in column 264). The mapping, also in
``docs/import_format.md``:

* **Ads** (cols 259-264): ``ad<adgroup_id>``; category_l1 = category_l2 = ``cate_<cate_id>``
  (one level only); attributes ``campaign_<id>`` and ``brand_<id>`` (brand 0 = none);
  advertiser ``adv<customer>``; ecpm = bid = the normalised price (a relative value in
  about 0.5-1.0, not money); product type "e-commerce product".
* **Users** (cols 250-258): ``u<userid>``; gender 1/2 → male/female; age None and the age
  level in ``education`` as ``age_level_<n>`` (User has no age-band field and the levels'
  year ranges are not published); residence ``city_level_<n>``; occupation
  ``college_student`` or ``other``; consumption_level ``pvalue_<n>;shopping_<n>``; a level
  0 of pvalue or city is "missing" and left out; cms_segid/cms_group_id are dropped;
  ARPU 0 (unknown).
* **Content** (cols 0-149, masks 150-249): each shopping behaviour with mask (col 150+i)
  set becomes a content behaviour on the item ``c<cate>_b<brand>`` (title "taobao item of
  category N, brand M", category ``cate_<cate>``, same id space as the ads). Behaviour code
  1 (94 % of rows: page view) → read; codes 2-4 (cart/fav/buy, order undocumented) → click.
  The second mask block (200-249) is only checked to be 0/1.
* **Behaviours and time**: there are no timestamps. Per user, rows are taken in file order;
  each row's 50-behaviour window is merged into the user's content timeline (a later row's
  window usually repeats the earlier one shifted by k new behaviours: only the part after the
  largest overlap is appended; with no overlap the whole window is appended). After the
  content of a row come its ad impression and, if clicked, a click. ``ts`` is the position
  in that per-user timeline (0, 1, 2, ...; oldest first).
* **Duplicates**: the same user or ad in several rows is written once; the first row wins
  and rows that disagree are counted in the manifest (``conflicts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from leadre_model.data.errors import ErrorCollector, validation_reason
from leadre_model.data.records import Action, Ad, Behavior, ContentItem, Domain, User
from leadre_model.data.store import WorldWriter
from leadre_model.progress import bar

FILE_NAME = "alimama_sampled_train.txt"
N_COLUMNS = 267
HISTORY = 50
PRICE_COL = 264
BEHAVIOUR_ACTIONS = {1: Action.READ, 2: Action.CLICK, 3: Action.CLICK, 4: Action.CLICK}
GENDERS = {1: "male", 2: "female"}


@dataclass
class _UserState:
    user: User
    profile: tuple[int, ...]  # raw profile columns, to spot rows that disagree
    content: list[tuple[int, int, int]] = field(default_factory=list)  # merged (btype, cate, brand)
    events: list[tuple[Domain, Action, str]] = field(default_factory=list)


def _parse_row(cells: list[str]) -> list[int | float]:
    """Integers everywhere but the price; raises ValueError naming the first bad column."""
    if len(cells) != N_COLUMNS:
        raise ValueError(f"expected {N_COLUMNS} comma-separated columns, got {len(cells)}")
    values: list[int | float] = []
    for i, cell in enumerate(cells):
        try:
            values.append(float(cell) if i == PRICE_COL else int(cell))
        except ValueError:
            kind = "a number" if i == PRICE_COL else "an integer"
            raise ValueError(f"column {i}: {cell.strip()!r} is not {kind}") from None
    return values


def _check_row(v: list) -> None:
    """Domain checks the records cannot express; raises ValueError."""
    for i in range(HISTORY):
        btype, cate, mask, mask2 = v[i], v[HISTORY + i], v[3 * HISTORY + i], v[4 * HISTORY + i]
        if mask not in (0, 1) or mask2 not in (0, 1):
            raise ValueError(
                f"behaviour {i}: masks in columns {150 + i} and {200 + i} must be 0 or 1"
            )
        if mask != (btype != 0):
            raise ValueError(
                f"behaviour {i} (column {i}): mask {mask} disagrees with behaviour type {btype}"
            )
        if mask and (btype not in BEHAVIOUR_ACTIONS or cate <= 0 or v[2 * HISTORY + i] < 0):
            raise ValueError(
                f"behaviour {i} (column {i}): type {btype} / category {cate} / brand "
                f"{v[2 * HISTORY + i]} out of range"
            )
    if min(v[250:259]) < 0 or min(v[259:264]) < 0:
        raise ValueError("negative id or level in the profile / ad columns (250-263)")
    if v[265] not in (0, 1) or v[266] not in (0, 1):
        raise ValueError(f"ad slot and click must be 0 or 1, got {v[265]} and {v[266]}")


def _user(v: list) -> User:
    _uid, _seg, _grp, gender, age_level, pvalue, shopping, occupation, city = v[250:259]
    consumption = ";".join(
        part
        for part in (
            f"pvalue_{pvalue}" if pvalue else "",
            f"shopping_{shopping}" if shopping else "",
        )
        if part
    )
    return User(
        user_id=f"u{v[250]}",
        gender=GENDERS.get(gender, f"gender_{gender}"),
        education=f"age_level_{age_level}",
        residence=f"city_level_{city}" if city else None,
        occupation="college_student" if occupation == 1 else "other",
        consumption_level=consumption or None,
    )


def _ad(v: list) -> Ad:
    adgroup, cate, campaign, customer, brand, price = v[259:265]
    attributes = [f"campaign_{campaign}"] + ([f"brand_{brand}"] if brand else [])
    return Ad(
        ad_id=f"ad{adgroup}",
        name=f"taobao ad {adgroup}, category {cate}" + (f", brand {brand}" if brand else ""),
        product_type="e-commerce product",
        category_l1=f"cate_{cate}",
        category_l2=f"cate_{cate}",
        attributes=attributes,
        advertiser_id=f"adv{customer}",
        ecpm=price,
        bid=price,
    )


def _content(cate: int, brand: int) -> ContentItem:
    return ContentItem(
        content_id=f"c{cate}_b{brand}",
        title=f"taobao item of category {cate}" + (f", brand {brand}" if brand else ", no brand"),
        category=f"cate_{cate}",
    )


def _window(v: list) -> list[tuple[int, int, int]]:
    return [
        (v[i], v[HISTORY + i], v[2 * HISTORY + i]) for i in range(HISTORY) if v[3 * HISTORY + i]
    ]


def merge_window(timeline: list, window: list) -> tuple[list, bool]:
    """Part of ``window`` that is new after ``timeline`` (largest suffix/prefix overlap), and
    whether any overlap was found (an empty timeline counts as aligned)."""
    for overlap in range(min(len(timeline), len(window)), 0, -1):
        if timeline[len(timeline) - overlap :] == window[:overlap]:
            return window[overlap:], True
    return window, not timeline


def _rows(path: Path, errors: ErrorCollector) -> Iterator[tuple[int, list]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if not text:
                continue
            try:
                values = _parse_row(text.split(","))
                _check_row(values)
            except ValueError as exc:
                errors.add(path, line, str(exc))
                continue
            yield line, values


def load_taobao(src: Path, out: Path, progress: bool = False) -> dict:
    """Load the sample (``src`` = the file or its directory) into the world ``out``
    (``progress``: a counting bar over the rows, a line in a log).

    Raises :class:`~leadre_model.data.errors.DataValidationError` (nothing written) when a
    row is bad; returns the manifest.
    """
    src = Path(src)
    path = src / FILE_NAME if src.is_dir() else src
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    errors = ErrorCollector()
    users: dict[str, _UserState] = {}
    ads: dict[str, tuple[Ad, tuple]] = {}
    content: dict[str, ContentItem] = {}
    conflicts = {"users": 0, "ads": 0}
    unaligned = 0
    for line, v in bar(_rows(path, errors), desc=path.name, unit="row", enabled=progress):
        try:
            user, ad = _user(v), _ad(v)
            window = _window(v)
            for _, cate, brand in window:
                key = f"c{cate}_b{brand}"
                if key not in content:
                    content[key] = _content(cate, brand)
        except ValidationError as exc:
            errors.add(path, line, validation_reason(exc))
            continue
        state = users.get(user.user_id)
        if state is None:
            state = users[user.user_id] = _UserState(user, tuple(v[251:259]))
        elif state.profile != tuple(v[251:259]):
            conflicts["users"] += 1
        if ad.ad_id not in ads:
            ads[ad.ad_id] = (ad, tuple(v[260:265]))
        elif ads[ad.ad_id][1] != tuple(v[260:265]):
            conflicts["ads"] += 1
        new, aligned = merge_window(state.content, window)
        unaligned += not aligned
        state.content.extend(new)
        state.events.extend(
            (Domain.CONTENT, BEHAVIOUR_ACTIONS[b], f"c{c}_b{br}") for b, c, br in new
        )
        state.events.append((Domain.AD, Action.IMPRESSION, ad.ad_id))
        if v[266] == 1:
            state.events.append((Domain.AD, Action.CLICK, ad.ad_id))
    errors.raise_if_any()

    with WorldWriter(out) as world:
        for ad, _ in ads.values():
            world.add("ads", ad)
        for item in content.values():
            world.add("content", item)
        for user_id, state in users.items():
            world.add("users", state.user)
            for ts, (domain, action, item_id) in enumerate(state.events):
                world.add(
                    "behaviors",
                    Behavior(user_id=user_id, ts=ts, domain=domain, action=action, item_id=item_id),
                )
        world.manifest = {
            "source": "taobao-ad-sample",
            "inputs": {"rows": str(path.resolve())},
            "advertisers": len({a.advertiser_id for a, _ in ads.values()}),
            "conflicts": conflicts,
            "windows_without_overlap": unaligned,
            "ts": "position in the user's merged timeline (no timestamps in the source)",
        }
    return world.manifest
