"""Join models trained apart into one ensemble directory (``leadre ensemble``).

``leadre train`` with ``TrainConfig.members`` > 1 trains an ensemble's members one after
another on one machine; joining lets them train at once on several machines (or adds a
member to an ensemble later). The result is the layout :func:`~leadre_model.llm.model.save_model`
writes: the first model as it is, every other one's weights and config in ``members/<i>``,
one manifest whose version hashes them all; :class:`~leadre_model.llm.retriever.SidRetriever`
ranks by the members' mean dense log-probability.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leadre_model.data.store import atomic_dir
from leadre_model.errors import BadInputError
from leadre_model.llm.dense_head import CONFIG_KEY
from leadre_model.llm.manifest import MANIFEST, Manifest
from leadre_model.llm.model import MEMBERS_DIR, member_dirs, weights_sha256

# what a member directory holds: the model's config and weights (the tokenizer is shared)
_MEMBER_FILES = ("config.json", "generation_config.json")


def _member_files(model_dir: Path) -> list[Path]:
    """The files of ``model_dir`` that are one member's own: its config and weights."""
    return [*(f for n in _MEMBER_FILES if (f := model_dir / n).is_file()),
            *sorted(model_dir.glob("*.safetensors"))]


def _parts(model_dir: Path) -> tuple[Manifest, list[Path]]:
    """The manifest of ``model_dir`` and the directories of its models (itself first, then
    its own members: an ensemble given is flattened)."""
    manifest = Manifest.read(model_dir)
    dirs = [model_dir, *member_dirs(model_dir, manifest.model_dump())]
    for d in dirs:
        config = d / "config.json"
        if not config.is_file():
            raise BadInputError(f"{d}: no config.json (not a saved model)")
        if not json.loads(config.read_text()).get(CONFIG_KEY):
            raise BadInputError(f"{d}: the model has no dense head (an ensemble ranks by the "
                                "mean of its members' dense heads)")
    return manifest, dirs


def join_models(model_dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Write the ensemble of ``model_dirs`` to ``out`` and return its manifest. The first
    model's tokenizer and prompt settings serve every member, so all must have been trained
    on the same index with the same tokenizer and prompts (BadInputError naming the one
    that differs)."""
    if len(model_dirs) < 2:
        raise BadInputError("an ensemble joins at least two models")
    parts = [_parts(Path(d)) for d in model_dirs]
    first, _ = parts[0]
    for d, (m, _) in zip(model_dirs[1:], parts[1:], strict=True):
        for what, mine, theirs in (
                ("index", m.index_digest, first.index_digest),
                ("tokenizer", m.tokenizer_sha256, first.tokenizer_sha256),
                ("prompt settings", m.prompt_config, first.prompt_config)):
            if mine != theirs:
                raise BadInputError(f"{d}: another {what} than {model_dirs[0]} (members share "
                                    "the first model's index, tokenizer and prompts)")
    sources = [d for _, dirs in parts for d in dirs]
    with atomic_dir(Path(out)) as tmp:
        for f in sources[0].iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copy2(f, tmp / f.name)
        paths = [f"{MEMBERS_DIR}/{i}" for i in range(1, len(sources))]
        for rel, src in zip(paths, sources[1:], strict=True):
            (tmp / rel).mkdir(parents=True)
            for f in _member_files(src):
                shutil.copy2(f, tmp / rel / f.name)
        weights = weights_sha256(tmp, paths)
        manifest = first.model_dump() | {
            "model_version": weights[:16], "weights_sha256": weights, "members": paths,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "num_parameters": sum(m.num_parameters for m, _ in parts)}
        manifest["extra"] = {**first.extra, "joined": [
            {"model": str(d), "model_version": m.model_version,
             "validation": m.extra.get("train", {}).get("validation")}
            for d, (m, _) in zip(model_dirs, parts, strict=True)]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def take_member(model_dir: Path, member: int, out: Path) -> dict[str, Any]:
    """Write member ``member`` (0 = the first) of the ensemble in ``model_dir`` to ``out`` as a
    model of its own (to serve or evaluate one member, e.g. to see what the ensemble adds),
    and return its manifest; its version hashes its own weights only."""
    manifest, dirs = _parts(Path(model_dir))
    if not 0 <= member < len(dirs):
        raise BadInputError(f"{model_dir}: no member {member} (it has {len(dirs)}: 0 to "
                            f"{len(dirs) - 1})")
    own = set(_member_files(Path(model_dir)))
    with atomic_dir(Path(out)) as tmp:
        for f in Path(model_dir).iterdir():  # tokenizer and the rest, shared by the members
            if f.is_file() and f.name != MANIFEST and f not in own:
                shutil.copy2(f, tmp / f.name)
        for f in _member_files(dirs[member]):
            shutil.copy2(f, tmp / f.name)
        weights = weights_sha256(tmp)
        taken = manifest.model_dump() | {
            "model_version": weights[:16], "weights_sha256": weights, "members": [],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "num_parameters": manifest.num_parameters // len(dirs)}
        taken["extra"] = {**manifest.extra, "taken": {
            "from": str(model_dir), "model_version": manifest.model_version, "member": member}}
        (tmp / MANIFEST).write_text(json.dumps(taken, indent=2))
    return taken


__all__ = ["join_models", "take_member"]
