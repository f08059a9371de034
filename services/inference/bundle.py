"""One loaded registry version: model, tokenizer, live trie(s), ad and advertiser tables.

Retrieval and catalog changes share one lock: a beam search walks the trie across levels,
so a pause or an add waits for the search in progress and the next one sees it (CPU
inference is one search at a time per instance anyway). A new version is a new Bundle; the
server swaps the reference, and a search that already holds the old bundle finishes on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leadre_model.index.live import LiveIndex
from leadre_model.llm.decode import constrained_beam_search, encode_prompts
from leadre_model.llm.retriever import DecoderParts, SidRetriever
from leadre_model.prompts.tasks import AdvertiserVocab
from services.common.contracts import CatalogEvent, RetrievedAd
from services.inference.registry import read_advertisers

log = logging.getLogger(__name__)
Prompt = str | Sequence[int]


@dataclass(frozen=True)
class Result:
    """One prompt's answer: ads (summed full-vocabulary log-probs, best first) and
    advertiser priors: probabilities normalised over the candidates considered (the B
    decoded advertisers, or the advertisers of the returned ads), best first, cut to top_k."""

    ads: list[RetrievedAd]
    advertisers: list[RetrievedAd]


class _Advertisers:
    """Advertiser vocabulary + trie, and which advertiser each ad row belongs to."""

    def __init__(self, vocab: AdvertiserVocab, ad_map: dict[str, str], ad_ids: list[str],
                 active: np.ndarray, tokenizer: Any) -> None:
        self.ids = vocab.advertiser_ids
        self.trie = vocab.build_trie()
        number = {a: i for i, a in enumerate(self.ids)}
        self.by_ad = {a: v for a, v in ad_map.items() if v in number}  # ad id → advertiser id
        self.of_row = np.array([number.get(ad_map.get(a, ""), -1) for a in ad_ids], np.int64)
        self.live = np.bincount(self.of_row[(self.of_row >= 0) & active], minlength=len(self.ids))
        vocab_ids = tokenizer.get_vocab()
        names = vocab.level_tokens()
        # Decodable only if the model was trained with the advertiser task (has <adv_i>).
        self.level_ids = ([np.array([vocab_ids[t] for t in lv], np.int64) for lv in names]
                          if all(t in vocab_ids for lv in names for t in lv) else None)

    def of(self, row: int) -> int:
        """Advertiser row of ad ``row``; -1 if unknown (ads added live carry no advertiser)."""
        return int(self.of_row[row]) if row < len(self.of_row) else -1

    def toggle(self, row: int, active: bool) -> None:
        """Ad ``row`` changed state: keep the advertiser's active-ad count and trie in step."""
        if (a := self.of(row)) < 0:
            return
        self.live[a] += 1 if active else -1
        if active and self.live[a] == 1:
            self.trie.resume(np.array([a]))
        elif not active and self.live[a] == 0:
            self.trie.pause(np.array([a]))


class Bundle(DecoderParts):
    """A served version (see module doc). Build with :meth:`load`."""

    def __init__(self, version: str, sid: SidRetriever,
                 advertisers: tuple[AdvertiserVocab, dict[str, str]] | None = None) -> None:
        self.version, self.sid = version, sid
        # added ads must fit the model's S-ID vocabulary: the level sizes of its index (trie)
        self.level_sizes = list(sid.trie.level_sizes)
        self.live = LiveIndex(sid.index, sid.trie, vocabulary=self.level_sizes)
        index = sid.index
        self.adv = (_Advertisers(*advertisers, index.ad_ids, index.active, self.tokenizer)
                    if advertisers else None)
        self.lock = threading.Lock()

    @classmethod
    def load(cls, vdir: str | Path, version: str | None = None,
             device: torch.device | None = None) -> Bundle:
        """Load ``<registry>/versions/<id>`` onto ``device`` (default: the CPU); ValueError
        when its model does not match its index (the manifest's digest, the S-ID tokens) —
        such a version is never served."""
        vdir = Path(vdir)
        sid = SidRetriever.from_dirs(vdir / "model", vdir / "index", device=device)
        adv = read_advertisers(vdir, sid.index.level_sizes[0])
        return cls(version or vdir.name, sid, adv)

    # the index's state (the live index changes it in place)
    @property
    def ad_ids(self) -> list[str]:
        return self.sid.index.ad_ids

    @property
    def codes(self) -> np.ndarray:
        return self.sid.index.codes

    @property
    def active(self) -> np.ndarray:
        return self.sid.index.active

    @property
    def row_of(self) -> Mapping[str, int]:
        return self.sid.index.row_by_id

    # -- catalog ------------------------------------------------------------------------
    def apply(self, events: Sequence[CatalogEvent]) -> list[tuple[CatalogEvent, str]]:
        """Apply catalog events in order; returns the skipped ones with the reason."""
        with self.lock:
            done = self.live.apply(events)
            if done.added:  # dense heads score the new ads too (by their codes)
                self.sid.refresh_dense_tables()
            if self.adv is not None:
                for row, on in done.toggled:
                    self.adv.toggle(row, on)
        return done.skipped

    # -- serving ------------------------------------------------------------------------
    def token_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Prompts (text or token ids) as token ids; ValueError naming the first prompt the
        model cannot take (empty, unknown token ids, longer than its positions)."""
        out: list[list[int]] = [list(p) if not isinstance(p, str) else [] for p in prompts]
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        for i, ids in zip(texts, encode_prompts(self.tokenizer, [prompts[i] for i in texts])):
            out[i] = ids
        vocab = len(self.tokenizer)
        limit = int(self.model.config.max_position_embeddings) - len(self.level_sizes)
        for i, ids in enumerate(out):
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            if min(ids) < 0 or max(ids) >= vocab:
                raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab})")
            if len(ids) > limit:
                raise ValueError(f"prompt {i} has {len(ids)} tokens; the model takes at most {limit}")
        return out

    def retrieve(self, prompts: Sequence[Prompt], beam_width: int, top_k: Sequence[int],
                 advertiser_prompts: Sequence[str | None] | None = None,
                 batch_size: int = 64,
                 exclude: Sequence[Sequence[str]] | None = None) -> list[Result]:
        """Ads per prompt (``top_k[i]`` ≤ ``beam_width`` of them) and advertiser priors.
        ``exclude[i]``: ad ids prompt ``i`` must not return (unknown ids are ignored)."""
        with self.lock, torch.inference_mode():
            rows = None if exclude is None else [
                {r for a in ex if (r := self.row_of.get(a)) is not None} for ex in exclude]
            hits = self.sid.retrieve(list(prompts), beam_width, batch_size=batch_size,
                                     exclude=rows)
            ads = [[RetrievedAd(ad_id=self.ad_ids[h.row], score=h.logprob) for h in hs[:k]]
                   for hs, k in zip(hits, top_k)]
            return [Result(a, adv) for a, adv in
                    zip(ads, self._advertisers(ads, beam_width, top_k, advertiser_prompts))]

    def _advertisers(self, ads: list[list[RetrievedAd]], beam_width: int, top_k: Sequence[int],
                     prompts: Sequence[str | None] | None) -> list[list[RetrievedAd]]:
        out: list[list[RetrievedAd]] = [[] for _ in ads]
        if self.adv is None:
            return out
        decode = [i for i, p in enumerate(prompts or []) if p and self.adv.level_ids is not None]
        if decode:
            hits = constrained_beam_search(self.model, self.tokenizer,
                                           [prompts[i] for i in decode],  # type: ignore[index]
                                           self.adv.trie, self.adv.level_ids, beam_width)
            for i, hs in zip(decode, hits):
                out[i] = _normalised([(self.adv.ids[h.row], h.logprob) for h in hs], top_k[i])
        for i in set(range(len(ads))) - set(decode):
            out[i] = ad_mass_priors(ads[i], self.adv.by_ad, top_k[i])
        return out


def ad_mass_priors(ads: Sequence[RetrievedAd], advertiser_of: Mapping[str, str],
                   top_k: int) -> list[RetrievedAd]:
    """Advertiser priors from retrieved ads: softmax over the ads' log-probs, summed per
    advertiser (ads without a known advertiser are left out), best first, cut to top_k."""
    mass: dict[str, float] = {}
    for a, w in zip(ads, _softmax([a.score for a in ads])):
        if (adv := advertiser_of.get(a.ad_id)) is not None:
            mass[adv] = mass.get(adv, 0.0) + float(w)
    best = sorted(mass.items(), key=lambda kv: -kv[1])[:top_k]
    return [RetrievedAd(ad_id=k, score=v) for k, v in best]


def _softmax(scores: Sequence[float]) -> np.ndarray:
    if not scores:
        return np.zeros(0)
    s = np.asarray(scores, np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


def _normalised(pairs: list[tuple[str, float]], k: int) -> list[RetrievedAd]:
    """Log-probs of decoded advertisers → probabilities over the returned ones."""
    weights = _softmax([s for _, s in pairs])
    return [RetrievedAd(ad_id=a, score=float(w)) for (a, _), w in zip(pairs, weights)][:k]


__all__ = ["Bundle", "Result", "ad_mass_priors"]
