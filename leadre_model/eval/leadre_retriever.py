"""LEADRE as a :class:`~leadre_model.eval.harness.Retriever`: case → canonical prompt (the
training PromptBuilder and PromptConfig, read back from the model's manifest) → trie-
constrained beam search → ad ids. Nothing is fitted on the split: the model was trained by
``leadre train`` on the same world's train targets (leave-one-out, so no test event is in
any training prompt or target)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from leadre_model.data.store import iter_records, load_ads
from leadre_model.errors import BadInputError
from leadre_model.eval.harness import EvalCase
from leadre_model.index.sid_index import SidIndex, load_index
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import cold_prefix_nodes, constrained_beam_search
from leadre_model.llm.model import load_model
from leadre_model.llm.tokenizer import level_token_ids
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.config import PromptConfig


class LeadreEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    beam_width: int = Field(20, ge=1, description="B; the harness asks for max_k ≤ B ads")
    batch_size: int = Field(32, ge=1, description="prompts per forward pass")
    progress: bool = True
    exclude_seen: bool = Field(False, description="mask the user's earlier target ads in the "
                               "beam search (as the item-id baselines' exclude_seen)")


def prompt_config_of(manifest: dict) -> PromptConfig:
    """The PromptConfig the model was trained with (saved by train_leadre)."""
    cfg = manifest.get("extra", {}).get("train", {}).get("config", {}).get("prompts")
    return PromptConfig.model_validate(cfg) if cfg else PromptConfig()


class LeadreRetriever:
    """A trained LEADRE model behind the harness's Retriever protocol."""

    cold_nodes: list[np.ndarray] | None = None  # trie nodes only new ads lead to (decode.py)

    def __init__(self, name: str, model_dir: Path, index_dir: Path, world: Path,
                 cfg: LeadreEvalConfig | None = None, index: SidIndex | None = None) -> None:
        """``index``: the index to decode over when it is not ``index_dir`` itself, e.g.
        the trained index plus ads added since with ``leadre index add`` (it must extend
        the trained one: same ads and S-IDs first)."""
        self.name, self.cfg = name, cfg or LeadreEvalConfig()
        trained = load_index(Path(index_dir))
        self.index = index or trained
        n = len(trained)
        if index is not None and (index.ad_ids[:n] != trained.ad_ids
                                  or not (index.codes[:n] == trained.codes).all()):
            raise BadInputError(f"the given index does not extend {index_dir}")
        self.model, self.tokenizer, self.manifest = load_model(
            model_dir, expected_index_digest=trained.digest())
        ads = {a.ad_id: a for a in load_ads(world)}
        content = {c.content_id: c for c in iter_records(world, "content")}
        self.builder = PromptBuilder(prompt_config_of(self.manifest), self.index, ads, content)
        # The trained index's level sizes are the model's S-ID vocabulary; an added ad whose
        # disambiguation code lies beyond it cannot be written by this model (counted).
        sizes = trained.level_sizes
        fits = (self.index.codes < np.asarray(sizes)).all(axis=1)
        self.unrepresentable = int((~fits).sum())
        self.trie = SidTrie.build(self.index.codes[fits], np.flatnonzero(fits),
                                  active=self.index.active[fits], level_sizes=sizes)
        self.level_ids = level_token_ids(self.tokenizer, sizes)
        # ads added after training (new ads): reached through their semantic prefix (decode.py)
        cold = np.arange(len(self.index)) >= n
        self.cold_nodes = (cold_prefix_nodes(self.trie, self.index.codes[fits], cold[fits])
                           if cold.any() else None)

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
        hits = constrained_beam_search(self.model, self.tokenizer, prompts, self.trie,
                                       self.level_ids, beam_width=beam, top_k=k,
                                       batch_size=self.cfg.batch_size, progress=self.cfg.progress,
                                       exclude=exclude, cold_nodes=self.cold_nodes)
        return [[self.index.ad_ids[h.row] for h in hs] for hs in hits]
