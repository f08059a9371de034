"""LEADRE as a :class:`~leadre_model.eval.harness.Retriever`: case → canonical prompt (the
training PromptBuilder and PromptConfig, read back from the model's manifest) → trie-
constrained beam search → ad ids. Nothing is fitted on the split: the model was trained by
``leadre train`` on the same world's train targets (leave-one-out, so no test event is in
any training prompt or target)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from leadre_model.data.store import iter_records, load_ads
from leadre_model.eval.harness import EvalCase
from leadre_model.index.sid_index import SidIndex, load_index
from leadre_model.llm.decode import constrained_beam_search
from leadre_model.llm.model import load_model
from leadre_model.llm.tokenizer import level_token_ids
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.config import PromptConfig


class LeadreEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    beam_width: int = Field(20, ge=1, description="B; the harness asks for max_k ≤ B ads")
    batch_size: int = Field(32, ge=1, description="prompts per forward pass")
    progress: bool = True


def prompt_config_of(manifest: dict) -> PromptConfig:
    """The PromptConfig the model was trained with (saved by train_leadre)."""
    cfg = manifest.get("extra", {}).get("train", {}).get("config", {}).get("prompts")
    return PromptConfig.model_validate(cfg) if cfg else PromptConfig()


class LeadreRetriever:
    """A trained LEADRE model behind the harness's Retriever protocol."""

    def __init__(self, name: str, model_dir: Path, index_dir: Path, world: Path,
                 cfg: LeadreEvalConfig | None = None, index: SidIndex | None = None) -> None:
        self.name, self.cfg = name, cfg or LeadreEvalConfig()
        self.index = index or load_index(Path(index_dir))
        self.model, self.tokenizer, self.manifest = load_model(
            model_dir, expected_index_digest=self.index.digest())
        ads = {a.ad_id: a for a in load_ads(world)}
        content = {c.content_id: c for c in iter_records(world, "content")}
        self.builder = PromptBuilder(prompt_config_of(self.manifest), self.index, ads, content)
        self.trie = self.index.build_trie()
        self.level_ids = level_token_ids(self.tokenizer, self.index.level_sizes)

    def prompts(self, cases: Sequence[EvalCase]) -> list[str]:
        return [self.builder.build(c.user, c.behaviors, c.now_ts) for c in cases]

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        beam = max(k, self.cfg.beam_width)
        prompts = self.prompts(histories)
        hits = constrained_beam_search(self.model, self.tokenizer, prompts, self.trie,
                                       self.level_ids, beam_width=beam, top_k=k,
                                       batch_size=self.cfg.batch_size, progress=self.cfg.progress)
        return [[self.index.ad_ids[h.row] for h in hs] for hs in hits]
