"""Where the serving processes find the model + index they serve: the registry's current
version (``services/inference/registry.py``: ``<registry>/versions/<id>/{model,index}``,
``<registry>/CURRENT``), and the live index (the catalog applier's, with new ads)."""

from __future__ import annotations

from pathlib import Path

from services.common.settings import Settings


def current_version_dir(registry: Path) -> Path | None:
    """``<registry>/versions/<CURRENT>``, or None before the first publish.

    Reads the layout of ``services.inference.registry`` (CURRENT, versions/) directly:
    importing that module pulls in transformers (~5-15 s of start-up on 2 busy cores),
    which the worker and the mixer never need."""
    try:
        version = (Path(registry) / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    return Path(registry) / "versions" / version if version else None


def feature_index_dir(settings: Settings) -> Path | None:
    """The live index when the catalog applier has made one, else the served version's."""
    live = Path(settings.live_index_dir)
    if (live / "index.json").exists():
        return live
    version = current_version_dir(Path(settings.registry_dir))
    return None if version is None else version / "index"


def version_index_dir(settings: Settings) -> Path | None:
    version = current_version_dir(Path(settings.registry_dir))
    return None if version is None else version / "index"
