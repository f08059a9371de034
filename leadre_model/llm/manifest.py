"""``manifest.json``: what a saved model is and which S-ID index it was trained on.

Torch-free (pydantic and json only), so serving processes that only build prompts (the
nearline worker) read it without loading transformers. Written by
:func:`leadre_model.llm.model.save_model`; read once per model directory with
:meth:`Manifest.read`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from leadre_model.errors import BadInputError
from leadre_model.prompts.config import PromptConfig

MANIFEST = "manifest.json"
FORMAT = "leadre-llm"
FORMAT_VERSION = 1


def read_manifest(model_dir: str | Path, check_format: bool = True) -> dict[str, Any]:
    """The manifest of ``model_dir`` as saved (a dict); FileNotFoundError when there is
    none, BadInputError for another format (unless ``check_format`` is off)."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a LEADRE model directory (no manifest)")
    manifest = json.loads(path.read_text())
    if check_format and (manifest.get("format") != FORMAT
                         or manifest.get("format_version") != FORMAT_VERSION):
        raise BadInputError(f"{path}: format {manifest.get('format')!r} "
                            f"v{manifest.get('format_version')}, "
                            f"this code reads {FORMAT!r} v{FORMAT_VERSION}")
    return manifest


class Manifest(BaseModel):
    """A model's manifest, typed. ``extra["train"]["config"]`` is the TrainConfig dump of
    ``leadre train`` (absent for models saved otherwise)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    model_version: str = ""
    base: str = ""
    architecture: str = ""
    num_parameters: int = 0
    weights_sha256: str = ""
    tokenizer_sha256: str = ""
    index_digest: str = ""
    level_sizes: list[int] = []
    created: str = ""
    members: list[str] = []  # an ensemble's other models, relative paths (llm/model.py)
    extra: dict[str, Any] = {}

    @classmethod
    def read(cls, model_dir: str | Path, check_format: bool = True) -> Manifest:
        """``check_format=False``: whatever fields the file has (building prompts needs only
        the training config)."""
        return cls.model_validate(read_manifest(model_dir, check_format))

    @property
    def train_config(self) -> dict[str, Any]:
        """The TrainConfig dump the model was trained with (``{}`` when absent)."""
        return self.extra.get("train", {}).get("config", {}) or {}

    @property
    def trained_on(self) -> str:
        """The device ``leadre train`` ran on, e.g. ``cpu (2 threads)`` or ``cuda:0 (NVIDIA
        H200)`` (``""`` for models saved otherwise). Informational: weights load anywhere."""
        return str(self.extra.get("train", {}).get("device", ""))

    @property
    def prompt_config(self) -> PromptConfig:
        """The PromptConfig the model was trained with (defaults when absent)."""
        cfg = self.train_config.get("prompts")
        return PromptConfig.model_validate(cfg) if cfg else PromptConfig()

    def check_index(self, digest: str, model_dir: str | Path) -> None:
        """BadInputError (a ValueError) unless the model was trained on the index whose
        :meth:`~leadre_model.index.sid_index.SidIndex.digest` is ``digest``: its S-ID tokens
        would name other ads."""
        if self.index_digest != digest:
            raise BadInputError(
                f"{model_dir}: model {self.model_version} was trained on S-ID index "
                f"{self.index_digest[:16]}…, not on the given index {digest[:16]}…; its S-ID "
                "tokens would name other ads. Use it with its own index or retrain.")


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Manifest", "read_manifest"]
