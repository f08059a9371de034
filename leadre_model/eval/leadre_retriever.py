"""LEADRE as a :class:`~leadre_model.eval.harness.Retriever`: case → canonical prompt (the
training PromptBuilder and PromptConfig, read back from the model's manifest) → trie-
constrained beam search → ad ids. Nothing is fitted on the split: the model was trained by
``leadre train`` on the same world's train targets (leave-one-out, so no test event is in
any training prompt or target)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from leadre_model.data.store import iter_records, load_ads
from leadre_model.eval.harness import EvalCase
from leadre_model.index.sid_index import SidIndex
from leadre_model.llm.manifest import Manifest
from leadre_model.llm.retriever import DecoderParts, SidRetriever
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.config import PromptConfig


class LeadreEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    beam_width: int = Field(20, ge=1, description="B; the harness asks for max_k ≤ B ads")
    batch_size: int = Field(32, ge=1, description="prompts per forward pass")
    progress: bool = True
    exclude_seen: bool = Field(False, description="mask the user's earlier target ads in the "
                               "beam search (as the item-id baselines' exclude_seen)")
    rerank: Literal["off", "dense", "mix", "full", "fuse"] | None = Field(
        None, description="a model with a dense head: how it ranks (llm/dense_head.py; "
        "None: as the model was saved)")


def prompt_config_of(manifest: dict) -> PromptConfig:
    """The PromptConfig the model was trained with (saved by train_leadre)."""
    return Manifest.model_validate(manifest).prompt_config


class LeadreRetriever(DecoderParts):
    """A trained LEADRE model behind the harness's Retriever protocol (TextTargetRetriever
    sets its own ``sid``)."""

    def __init__(self, name: str, model_dir: Path, index_dir: Path, world: Path,
                 cfg: LeadreEvalConfig | None = None, index: SidIndex | None = None,
                 embeddings: np.ndarray | None = None, device: torch.device | None = None) -> None:
        """``index``: the index to decode over when it is not ``index_dir`` itself, e.g.
        the trained index plus ads added since with ``leadre index add`` (it must extend
        the trained one: same ads and S-IDs first); ``embeddings``: its text embeddings,
        for a model that takes item text; ``device``: where the model and trie live."""
        self.name, self.cfg = name, cfg or LeadreEvalConfig()
        self.sid = SidRetriever.from_dirs(model_dir, index_dir, device=device)
        # ads added after training (new ads): reached through their semantic prefix; those
        # beyond the model's S-ID vocabulary cannot be written by it (counted)
        self.unrepresentable = 0
        if index is not None:
            self.sid, self.unrepresentable = self.sid.extended(index, embeddings)
        self.index = self.sid.index
        ads = {a.ad_id: a for a in load_ads(world)}
        content = {c.content_id: c for c in iter_records(world, "content")}
        assert self.sid.manifest is not None
        self.builder = PromptBuilder(self.sid.manifest.prompt_config, self.index, ads, content)

    @property
    def cold_nodes(self) -> Sequence[np.ndarray] | None:
        """Trie nodes only new ads lead to (decode.py)."""
        return self.sid.cold_nodes

    def prompts(self, cases: Sequence[EvalCase]) -> list[str]:
        return [self.builder.build(c.user, c.behaviors, c.now_ts) for c in cases]

    @property
    def exclude_seen(self) -> bool:
        return self.cfg.exclude_seen

    @exclude_seen.setter
    def exclude_seen(self, on: bool) -> None:
        self.cfg = self.cfg.model_copy(update={"exclude_seen": on})

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        beam = max(k, self.cfg.beam_width)
        prompts = self.prompts(histories)
        exclude = None
        if self.cfg.exclude_seen:
            exclude = [{self.index.row_of(a) for a in c.ad_history if a in self.index}
                       for c in histories]
        self.sid.rerank = self.cfg.rerank
        hits = self.sid.retrieve(prompts, beam, top_k=k, exclude=exclude,
                                 batch_size=self.cfg.batch_size, progress=self.cfg.progress)
        return self.sid.ad_ids(hits)
