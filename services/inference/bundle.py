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

from leadre_model.index.sid_index import load_index
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import constrained_beam_search, encode_prompts
from leadre_model.llm.model import load_model, sid_level_sizes
from leadre_model.llm.tokenizer import level_token_ids
from leadre_model.prompts.tasks import AdvertiserVocab
from services.common.contracts import CatalogEvent, CatalogOp, RetrievedAd
from services.inference.registry import check_model_matches_index, read_advertisers

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


class Bundle:
    """A served version (see module doc). Build with :meth:`load`."""

    def __init__(self, version: str, model: Any, tokenizer: Any, manifest: dict[str, Any],
                 ad_ids: list[str], codes: np.ndarray, active: np.ndarray,
                 advertisers: tuple[AdvertiserVocab, dict[str, str]] | None = None) -> None:
        self.version, self.model, self.tokenizer, self.manifest = version, model, tokenizer, manifest
        levels = codes.shape[1]
        self.level_sizes = sid_level_sizes(tokenizer)[:levels]
        self.level_ids = level_token_ids(tokenizer, self.level_sizes)
        self.trie = SidTrie.build(codes, np.arange(len(ad_ids)), active, level_sizes=self.level_sizes)
        self.ad_ids, self.active = list(ad_ids), np.asarray(active, bool).copy()
        self.codes = np.asarray(codes, np.int64)
        self.row_of = {a: i for i, a in enumerate(self.ad_ids)}
        self.adv = _Advertisers(*advertisers, self.ad_ids, self.active, tokenizer) if advertisers else None
        self.lock = threading.Lock()

    @classmethod
    def load(cls, vdir: str | Path, version: str | None = None) -> Bundle:
        """Load ``<registry>/versions/<id>``; ValueError when its model does not match its
        index (the manifest's digest) — such a version is never served."""
        vdir = Path(vdir)
        index = load_index(vdir / "index")
        check_model_matches_index(vdir / "model", index)
        model, tok, manifest = load_model(vdir / "model", expected_index_digest=index.digest())
        adv = read_advertisers(vdir, index.level_sizes[0])
        return cls(version or vdir.name, model, tok, manifest, index.ad_ids, index.codes,
                   index.active, adv)

    # -- catalog ------------------------------------------------------------------------
    def apply(self, events: Sequence[CatalogEvent]) -> list[tuple[CatalogEvent, str]]:
        """Apply catalog events in order; returns the skipped ones with the reason."""
        skipped: list[tuple[CatalogEvent, str]] = []
        with self.lock:
            adds: list[CatalogEvent] = []
            for ev in events:
                if ev.op is CatalogOp.ADD:
                    adds.append(ev)
                    continue
                self._add(adds, skipped)  # keep the stream's order: adds before later pauses
                adds = []
                if (row := self.row_of.get(ev.ad_id)) is None:
                    skipped.append((ev, "unknown ad"))
                    continue
                on = ev.op is CatalogOp.RESUME
                if bool(self.active[row]) != on:
                    (self.trie.resume if on else self.trie.pause)(np.array([row]))
                    self.active[row] = on
                    if self.adv is not None:
                        self.adv.toggle(row, on)
            self._add(adds, skipped)
        return skipped

    def _add(self, adds: list[CatalogEvent], skipped: list[tuple[CatalogEvent, str]]) -> None:
        fresh: dict[str, tuple[int, ...]] = {}
        for ev in adds:
            why = self._add_problem(ev)
            if why:
                skipped.append((ev, why))
            elif ev.ad_id not in self.row_of and ev.ad_id not in fresh:
                fresh[ev.ad_id] = tuple(ev.codes or ())
        if not fresh:
            return
        try:
            self._insert(list(fresh.items()))
        except ValueError:  # an S-ID already taken: find which, add the others
            for item in fresh.items():
                try:
                    self._insert([item])
                except ValueError as exc:
                    skipped.append((CatalogEvent(op=CatalogOp.ADD, ad_id=item[0], codes=item[1]),
                                    str(exc)))

    def _insert(self, items: list[tuple[str, tuple[int, ...]]]) -> None:
        rows = np.arange(len(self.ad_ids), len(self.ad_ids) + len(items))
        self.trie.add(np.array([c for _, c in items], np.int64), rows)
        self.ad_ids += [a for a, _ in items]
        self.row_of.update({a: int(r) for (a, _), r in zip(items, rows)})
        self.active = np.concatenate([self.active, np.ones(len(items), bool)])
        self.codes = np.concatenate([self.codes, np.array([c for _, c in items], np.int64)])

    def _add_problem(self, ev: CatalogEvent) -> str:
        codes = ev.codes
        if not codes:
            return "add without codes"
        if ev.ad_id in self.row_of:  # e.g. replayed onto a version that indexed it since
            known = tuple(int(c) for c in self.codes[self.row_of[ev.ad_id]])
            return "" if known == codes else f"already indexed with other codes {list(known)}"
        if len(codes) != len(self.level_sizes) or any(
                not 0 <= c < k for c, k in zip(codes, self.level_sizes)):
            return (f"codes {list(codes)} do not fit the model's S-ID vocabulary "
                    f"(level sizes {self.level_sizes})")
        return ""

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
            hits = constrained_beam_search(self.model, self.tokenizer, list(prompts), self.trie,
                                           self.level_ids, beam_width, batch_size=batch_size,
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
