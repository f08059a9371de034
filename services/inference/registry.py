"""Versioned model + trie artifacts: what an inference instance serves.

Layout of a registry directory::

    CURRENT                         the served version id (one line, replaced atomically)
    versions/<id>/model/            leadre_model.llm.model.save_model output (manifest.json)
    versions/<id>/index/            the S-ID index the model was trained on (load_index)
    versions/<id>/advertisers.parquet     advertiser vocabulary (id, code_0, code_1, active)
    versions/<id>/ad_advertisers.parquet  ad_id → advertiser_id of the indexed ads
    versions/<id>/version.json      id, created, model_version, index digest, sources

A version is self-contained (the advertiser files are written when ``world`` is given) and
immutable once published; publishing validates the model against the index *before*
anything becomes current, so a server never sees a model whose S-ID tokens name other ads.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from leadre_model.data.store import atomic_dir, atomic_path, load_ads
from leadre_model.errors import UsageError
from leadre_model.index.sid_index import SidIndex, load_index
from leadre_model.llm.manifest import Manifest, read_manifest
from leadre_model.llm.model import load_tokenizer
from leadre_model.llm.tokenizer import level_token_ids
from leadre_model.prompts.tasks import AdvertiserVocab, advertiser_vocab

CURRENT = "CURRENT"
VERSIONS = "versions"
VERSION_JSON = "version.json"
ADVERTISERS = "advertisers.parquet"
AD_ADVERTISERS = "ad_advertisers.parquet"
_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def version_dir(registry: str | Path, version_id: str) -> Path:
    if not _VERSION_ID.fullmatch(version_id):
        raise UsageError(f"bad version id {version_id!r}: use 1-64 of [A-Za-z0-9_.-], "
                         "starting with a letter or digit")
    return Path(registry) / VERSIONS / version_id


def current_version(registry: str | Path) -> str | None:
    """The id in ``<registry>/CURRENT``, or None when nothing was published yet."""
    path = Path(registry) / CURRENT
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def list_versions(registry: str | Path) -> list[str]:
    root = Path(registry) / VERSIONS
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []


def check_model_matches_index(model_dir: Path, index: SidIndex) -> dict[str, Any]:
    """The manifest of ``model_dir`` if its model was trained on ``index``; BadInputError
    (a ValueError) with the reason otherwise (digest differs, or the tokenizer lacks the
    index's S-ID tokens)."""
    manifest = read_manifest(model_dir)
    Manifest.model_validate(manifest).check_index(index.digest(), model_dir)
    level_token_ids(load_tokenizer(model_dir), index.level_sizes)  # ValueError if tokens missing
    return manifest


def publish_version(
    registry: str | Path,
    model_dir: str | Path,
    index_dir: str | Path,
    version_id: str | None = None,
    world: str | Path | None = None,
) -> str:
    """Copy model + index (+ advertiser tables from ``world``'s ads) into a new version and
    make it current. Validation (manifest ↔ index digest, S-ID tokens) happens before
    anything is written; the version directory appears complete or not at all, and
    ``CURRENT`` is replaced atomically only after it. Returns the version id.

    ValueError: mismatched model/index, a bad or already used version id.
    """
    registry, model_dir, index_dir = Path(registry), Path(model_dir), Path(index_dir)
    index = load_index(index_dir)
    manifest = check_model_matches_index(model_dir, index)
    if version_id is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        version_id = f"{stamp}-{str(manifest.get('model_version', 'model'))[:8]}"
    final = version_dir(registry, version_id)
    if final.exists():
        raise UsageError(f"version {version_id!r} already exists in {registry} "
                         "(versions are immutable)")
    with atomic_dir(final) as tmp:
        shutil.copytree(model_dir, tmp / "model")
        shutil.copytree(index_dir, tmp / "index")
        if world is not None:
            _write_advertisers(tmp, index, Path(world))
        info = {"version": version_id, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "model_version": manifest.get("model_version"), "index_digest": index.digest(),
                "num_ads": len(index), "model_source": str(model_dir.resolve()),
                "index_source": str(index_dir.resolve()), "advertisers": world is not None}
        (tmp / VERSION_JSON).write_text(json.dumps(info, indent=2))
    set_current(registry, version_id)
    return version_id


def set_current(registry: str | Path, version_id: str) -> None:
    """Point ``CURRENT`` at an existing version (also: roll back), atomically."""
    if not version_dir(registry, version_id).is_dir():
        raise UsageError(f"no version {version_id!r} in {registry}")
    with atomic_path(Path(registry) / CURRENT) as tmp:
        tmp.write_text(version_id + "\n")


def _write_advertisers(out: Path, index: SidIndex, world: Path) -> None:
    ads = {a.ad_id: a for a in load_ads(world)}
    vocab = advertiser_vocab(index, ads)
    pq.write_table(pa.table({"advertiser_id": vocab.advertiser_ids, "code_0": vocab.codes[:, 0],
                             "code_1": vocab.codes[:, 1], "active": vocab.active}), out / ADVERTISERS)
    known = [a for a in index.ad_ids if a in ads]
    pq.write_table(pa.table({"ad_id": known, "advertiser_id": [ads[a].advertiser_id for a in known]}),
                   out / AD_ADVERTISERS)


def read_advertisers(vdir: Path, first_level_size: int) -> tuple[AdvertiserVocab, dict[str, str]] | None:
    """The version's advertiser vocabulary and ad → advertiser map (None if not stored)."""
    if not (vdir / ADVERTISERS).exists():
        return None
    import numpy as np

    t = pq.read_table(vdir / ADVERTISERS).to_pydict()
    codes = np.stack([np.asarray(t["code_0"], np.int64), np.asarray(t["code_1"], np.int64)], 1)
    vocab = AdvertiserVocab(list(t["advertiser_id"]), codes.reshape(-1, 2),
                            np.asarray(t["active"], bool), first_level_size)
    m = pq.read_table(vdir / AD_ADVERTISERS).to_pydict()
    return vocab, dict(zip(m["ad_id"], m["advertiser_id"]))


__all__ = [
    "check_model_matches_index",
    "current_version",
    "list_versions",
    "publish_version",
    "read_advertisers",
    "set_current",
    "version_dir",
]
