"""Table 6 (§5.2.5): ads as *text* instead of S-IDs — the ad's original text (its name) or a
compressed text — both in the prompt history and as the generation target, decoded exactly
with a trie over the targets' token sequences. Everything else is the S-ID model's: tasks,
splits, augmentation seeds, tokenizer recipe, model, curriculum SFT (no DPO).

Target texts (:data:`TextTargetKind`):

* ``name``: the ad's name.
* ``compressed``: ``"{brand} {category_l2}"``; brand = the ad's ``brand_*`` attribute (the
  synthetic world, Taobao), else the first word of the name (Amazon titles open with the
  brand). Why: a synthetic name is brand + adjective + product noun + series code, and the
  adjective and the series code are drawn uniformly at random — noise a text generator must
  reproduce token by token — while the brand (advertiser affinity) and the second-level
  category (the user's interest) are what behaviour follows (docs/synthetic_world.md). It is
  2–5 words whatever the source (an Amazon title runs to 60+ characters), the kind of
  redundancy-free text the paper contrasts with the original.
* Both are cleaned the way the prompt builder shows names (its separators ``^ ; newline``
  and whitespace runs → one space) and lose leading punctuation: every prompt ends with
  ``[Response]:`` and a completion opening with punctuation would merge with that ``:``
  into one BPE pre-token, so the prompt would not tokenize the same alone.
* Unique: ads are taken in ad-id order; the first with a given text keeps it, each later
  one gets `` #n`` (the smallest n ≥ 2 whose text is free) — like the S-IDs' extra code, a
  deterministic number that carries no meaning. ``brand l2`` collides often (synthetic, 150
  ads: 66 distinct texts; 1,000 ads: 425, up to 59 in one group), so for compressed texts
  the suffix identifies much as the S-IDs' last levels do; names almost never collide.

Samples (:func:`text_samples`): ``ex`` the ad's description (the index's template, real
name) → target text; ``im`` history with ads by name → target text; ``main`` history with
ads as their target texts → target text. For ``name``, IM and Main differ only by the
suffixes of colliding names (and their augmentation draws); the three stages stay so that
both variants get the S-ID model's budget.

Decoding. TRL (1.16) appends the EOS text to a completion, tokenizes prompt and prompt +
completion, and trains on the ids after their common prefix. :func:`completion_ids` does
the same with each template's question + response marker as the prompt (ValueError when
the marker's ids are not a prefix — a tokenizer merging across the boundary — or templates
disagree), so a trie sequence is the trained completion, EOS included. Sequences are padded
with EOS to the longest, L; the trie has L levels of width V = len(tokenizer), code c at any
level being token c. A beam that has emitted EOS is finished: :func:`finish_at_eos` gives
its EOS pad probability 1, so an ad's score is exactly log p(text + EOS | prompt), what SFT
maximised, whatever the text's length.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.data.records import Ad, ContentItem
from leadre_model.data.split import iter_user_histories
from leadre_model.data.store import iter_records, load_ads
from leadre_model.eval.harness import EvalCase
from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever, prompt_config_of
from leadre_model.index.sid_index import SidIndex, load_index
from leadre_model.index.trie import SidTrie
from leadre_model.llm.model import build_model, load_model, save_model
from leadre_model.llm.retriever import SidRetriever
from leadre_model.llm.tokenizer import train_tokenizer
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.config import PromptConfig, PromptTemplate
from leadre_model.prompts.tasks import Sample, SplitName, explicit_samples, user_samples
from leadre_model.train.pipeline import TrainConfig, cap_samples
from leadre_model.train.sft import parse_curriculum, run_curriculum

TextTargetKind = Literal["name", "compressed"]
TEXT_TASKS = ("ex", "im", "main")
RULES: dict[str, str] = {
    "name": "the ad's name",
    "compressed": "brand (brand_* attribute, else the name's first word) + category_l2",
}
_SPACES = re.compile(r"[\^;\s]+")  # the builder's separators and any whitespace run
_LEADING = re.compile(r"^[\W_]+")


# -- texts ----------------------------------------------------------------------------
def _check_kind(kind: str) -> TextTargetKind:
    if kind not in get_args(TextTargetKind):
        raise ValueError(f"text target kind must be one of {get_args(TextTargetKind)}, not {kind!r}")
    return kind  # type: ignore[return-value]


def _brand(ad: Ad) -> str:
    brands = [a[len("brand_"):] for a in ad.attributes if a.startswith("brand_") and len(a) > 6]
    return brands[0] if brands else (ad.name.split() or [""])[0]


def base_text(ad: Ad, kind: TextTargetKind) -> str:
    """The ad's text before disambiguation (module doc); the ad id if nothing is left."""
    raw = ad.name if _check_kind(kind) == "name" else f"{_brand(ad)} {ad.category_l2}"
    return _LEADING.sub("", _SPACES.sub(" ", raw).strip()) or ad.ad_id


def target_texts(ads: Iterable[Ad], kind: TextTargetKind) -> dict[str, str]:
    """ad id → unique target text (module doc), in ad-id order."""
    ordered = sorted(ads, key=lambda a: a.ad_id)
    bases = [base_text(a, kind) for a in ordered]
    taken, used, next_n = set(bases), set(), {}
    out: dict[str, str] = {}
    for ad, text in zip(ordered, bases):
        if text in used:  # a later ad with a taken text: the next free " #n"
            n = next_n.get(text, 2)
            while f"{text} #{n}" in taken:
                n += 1
            next_n[text] = n + 1
            text = f"{text} #{n}"
            taken.add(text)
        used.add(text)
        out[ad.ad_id] = text
    return out


def index_texts(index: SidIndex, ads: Mapping[str, Ad], kind: TextTargetKind) -> dict[str, str]:
    """Target texts of the indexed ads that are in the catalog (the S-ID model's ad set)."""
    return target_texts((ads[a] for a in index.ad_ids if a in ads), kind)


def texts_digest(texts: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(texts.items())).encode()).hexdigest()


# -- token sequences and trie ---------------------------------------------------------
def completion_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                   templates: Sequence[PromptTemplate]) -> list[list[int]]:
    """The ids SFT trains on for each text as a completion, EOS last (module doc)."""
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None or eos_id is None:
        raise ValueError("the tokenizer has no EOS token: a text target could not end")
    out: list[list[int]] | None = None
    for ctx in dict.fromkeys(f"{t.question}{t.response}" for t in templates):
        head = tokenizer(ctx)["input_ids"]
        ids = []
        for text, full in zip(texts, tokenizer([ctx + t + eos for t in texts])["input_ids"]):
            if full[:len(head)] != head or len(full) <= len(head) or full[-1] != eos_id:
                raise ValueError(f"the tokenizer does not keep the prompt end {ctx[-12:]!r} apart "
                                 f"from the completion {text!r} (or drops EOS): SFT would train "
                                 "on other ids than the decoder feeds")
            ids.append(full[len(head):])
        if out is not None and ids != out:
            raise ValueError("templates tokenize the same completion differently")
        out = ids
    return out or []


def build_text_trie(tokenizer: PreTrainedTokenizerBase, sequences: Sequence[Sequence[int]],
                    rows: np.ndarray, active: np.ndarray) -> tuple[SidTrie, list[np.ndarray]]:
    """Trie over EOS-padded token sequences (level l, code c = token c) and the
    ``level_token_ids`` for :func:`constrained_beam_search`."""
    width = max(len(s) for s in sequences)
    codes = np.full((len(sequences), width), tokenizer.eos_token_id, dtype=np.int64)
    for i, s in enumerate(sequences):
        codes[i, :len(s)] = s
    vocab = max(len(tokenizer), int(codes.max()) + 1)
    trie = SidTrie.build(codes, rows, active, level_sizes=[vocab] * width)
    return trie, [np.arange(vocab, dtype=np.int64)] * width


def finish_at_eos(model: PreTrainedModel, eos_id: int) -> RemovableHandle:
    """Make ``model`` treat EOS as the end of a text during beam search, in place: on any
    one-token-per-row forward (a decoding step; a prefill has whole prompts) a row whose
    input is EOS belongs to a finished beam, and its next token is EOS with probability 1
    (logits 0 there, -inf elsewhere), so the EOS padding adds log 1 = 0 to its score.
    A forward hook, so the decoder gets the real model (any engine). Returns the handle
    (``.remove()`` undoes it)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] != 1:
            return None
        done = ids[:, 0] == eos_id
        if not bool(done.any()):
            return None
        logits = output.logits.clone()
        row = torch.full_like(logits[0, -1], float("-inf"))
        row[eos_id] = 0.0
        logits[done, -1] = row
        output.logits = logits
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


# -- samples --------------------------------------------------------------------------
def text_catalog(ads: Mapping[str, Ad], texts: Mapping[str, str]) -> dict[str, Ad]:
    """The catalog with each ad's name replaced by its target text: a PromptBuilder over it
    shows ads "by name" as their targets (ads without a text keep their name)."""
    return {a: ad.model_copy(update={"name": texts[a]}) if a in texts else ad
            for a, ad in ads.items()}


def _builders(cfg: PromptConfig, index: SidIndex, ads: Mapping[str, Ad],
              content: Mapping[str, ContentItem], texts: Mapping[str, str]
              ) -> tuple[PromptBuilder, PromptBuilder]:
    """(real names for ex/im, target texts for main)."""
    shown = cfg.model_copy(update={"use_sids_for_ads": False})
    return (PromptBuilder(cfg, index, ads, content),
            PromptBuilder(shown, index, text_catalog(ads, texts), content))


def text_samples(world: Path, index: SidIndex, cfg: PromptConfig, texts: Mapping[str, str],
                 tasks: Sequence[str], split: SplitName,
                 users: Iterable[str] | None = None) -> list[Sample]:
    """``ex``/``im``/``main`` samples (module doc) with the S-ID model's targets, splits and
    augmentation; the completion is the target ad's text."""
    unknown = set(tasks) - set(TEXT_TASKS)
    if unknown:
        raise ValueError(f"text-target variants train {TEXT_TASKS}, not {sorted(unknown)}")
    ads = {a.ad_id: a for a in load_ads(world)}
    content = {c.content_id: c for c in iter_records(world, "content")}
    plain, shown = _builders(cfg, index, ads, content, texts)

    def samples() -> Iterator[Sample]:
        if "ex" in tasks:
            yield from explicit_samples(plain, augment=split == "train")
        if "im" not in tasks and "main" not in tasks:
            return
        for h in iter_user_histories(world, users, positive_only=True):
            if "im" in tasks:
                yield from user_samples(plain, h, ["im"], split)
            if "main" in tasks:
                yield from user_samples(shown, h, ["main"], split)

    return [{**s, "completion": texts[s["target_ad"]]} for s in samples()
            if s["target_ad"] in texts]


# -- training -------------------------------------------------------------------------
def train_text_variant(world: Path, index_dir: Path, out: Path, cfg: TrainConfig,
                       kind: TextTargetKind, progress: bool = True) -> dict[str, Any]:
    """Curriculum SFT (no DPO: ``cfg.dpo`` is ignored) of the ``kind`` text-target variant;
    saves the model (``save_model``, manifest ``extra.text_target``), ``train_log.json`` and
    ``target_texts.json`` into ``out``; returns the summary."""
    kind = _check_kind(kind)
    out, timings = Path(out), {}
    t0 = time.perf_counter()
    index = load_index(Path(index_dir))
    ads = {a.ad_id: a for a in load_ads(world)}
    texts = index_texts(index, ads, kind)
    tasks = sorted({t for stage in parse_curriculum(cfg.curriculum) for t in stage})
    samples = text_samples(world, index, cfg.prompts, texts, tasks, "train")
    by_task = {t: cap_samples([s for s in samples if s["task"] == t], cfg.max_samples_per_task,
                              cfg.sft.seed) for t in tasks}
    timings["samples_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    corpus = [s["prompt"] for group in by_task.values() for s in group] + list(texts.values())
    # No S-ID tokens; a checkpoint base keeps its own tokenizer (text is what it knows).
    tokenizer = train_tokenizer(corpus, [], cfg=cfg.tokenizer) if cfg.llm.base == "tiny" else None
    model, tokenizer = build_model(cfg.llm, tokenizer)
    seqs = completion_ids(tokenizer, list(texts.values()), cfg.prompts.templates)  # fail early
    timings["tokenizer_model_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sft_logs = run_curriculum(model, tokenizer, by_task, cfg.curriculum, cfg.sft, progress)
    timings["sft_s"] = time.perf_counter() - t0

    meta = {"kind": kind, "rule": RULES[kind], "ads": len(texts),
            "distinct_base_texts": len({base_text(ads[a], kind) for a in texts}),
            "max_tokens": max(map(len, seqs)), "texts_sha256": texts_digest(texts)}
    summary = {"config": {**cfg.model_dump(), "dpo": None}, "sft": sft_logs,
               "samples": {t: len(v) for t, v in by_task.items()}, "dpo_pairs": 0, "dpo": [],
               "timings": timings, "text_target": meta}
    save_model(model, tokenizer, out, index.digest(), extra={"train": summary, "text_target": meta})
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    (out / "target_texts.json").write_text(json.dumps(texts, indent=1, ensure_ascii=False),
                                          encoding="utf-8")
    return summary


# -- retrieval ------------------------------------------------------------------------
class TextTargetRetriever(LeadreRetriever):
    """A text-target model behind the harness's Retriever protocol: case → canonical prompt
    (ads as target texts) → trie-constrained beam search over the texts → ad ids. Shares
    :meth:`LeadreRetriever.recommend`; only what it decodes over differs (no S-ID index
    trie, so the parent's constructor is not run)."""

    def __init__(self, name: str, model_dir: Path, index_dir: Path, world: Path,
                 kind: TextTargetKind, beam_width: int = 20, batch_size: int = 32,
                 progress: bool = False, index: SidIndex | None = None) -> None:
        self.name, self.kind = name, _check_kind(kind)
        self.cfg = LeadreEvalConfig(beam_width=beam_width, batch_size=batch_size,
                                    progress=progress)
        self.index = index or load_index(Path(index_dir))
        model, tokenizer, self.manifest = load_model(
            model_dir, expected_index_digest=self.index.digest())
        ads = {a.ad_id: a for a in load_ads(world)}
        self.texts = index_texts(self.index, ads, self.kind)
        meta = self.manifest.get("extra", {}).get("text_target") or {}
        if meta.get("kind") != self.kind or meta.get("texts_sha256") != texts_digest(self.texts):
            raise ValueError(f"{model_dir}: trained for text targets {meta.get('kind')!r} of "
                             f"another catalog, not {self.kind!r} of this world and index")
        cfg = prompt_config_of(self.manifest)
        content = {c.content_id: c for c in iter_records(world, "content")}
        self.builder = _builders(cfg, self.index, ads, content, self.texts)[1]
        rows = np.array([self.index.row_of(a) for a in self.texts], dtype=np.int64)
        seqs = completion_ids(tokenizer, list(self.texts.values()), cfg.templates)
        trie, level_ids = build_text_trie(tokenizer, seqs, rows, self.index.active[rows])
        finish_at_eos(model, tokenizer.eos_token_id)  # this retriever's own copy
        self.sid = SidRetriever(model, tokenizer, self.index, trie, level_ids)

    def prompts(self, cases: Sequence[EvalCase]) -> list[str]:
        return [self.builder.build(c.user, c.behaviors, c.now_ts, ads_as="name") for c in cases]


__all__ = [
    "RULES",
    "TextTargetKind",
    "TextTargetRetriever",
    "base_text",
    "build_text_trie",
    "completion_ids",
    "finish_at_eos",
    "index_texts",
    "target_texts",
    "text_samples",
    "train_text_variant",
]
