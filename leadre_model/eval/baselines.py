"""Item-ID baselines for the evaluation harness: popularity, item-CF, SASRec.

All three speak integer item ids ``0..n_items-1`` (the harness maps ad ids to them) and
share one protocol::

    model.fit(train_sequences, valid=None)        # sequences of item ids, oldest first
    model.recommend(histories, k, exclude_seen=False) -> np.ndarray (B, k)

``valid`` is ``(histories, targets)``; SASRec early-stops on it, the others ignore it.
``allowed`` (a boolean mask over items, e.g. the active ads) restricts what may be
recommended; slots that cannot be filled are ``-1``. Everything is seeded: same data and
config → same lists.

SASRec (Kang & McAuley, 2018) is trained with full-softmax cross-entropy by default; the
sampled BCE with one negative of the original paper is the ``loss="bce"`` option. Open
re-implementations found CE much stronger, and several generative-retrieval papers compare
against the weaker BCE version — so the harness reports both.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm import tqdm

from leadre_model.eval.metrics import INVALID, ndcg_at_k
from leadre_model.index.collab import cooccurring_pairs

Histories = Sequence[Sequence[int]]
Valid = tuple[Histories, Sequence[int]]


class ItemRecommender:
    """Shared ``recommend``: score every item, mask, take the top ``k``."""

    batch_size = 1024

    def __init__(self, n_items: int, allowed: np.ndarray | None = None) -> None:
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if allowed is not None and allowed.shape != (n_items,):
            raise ValueError(f"allowed must have shape ({n_items},), got {allowed.shape}")
        self.n_items = n_items
        self.allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
        self.popularity = np.zeros(n_items, dtype=np.float64)

    def fit(self, train_sequences: Histories, valid: Valid | None = None) -> Self:
        self.popularity = item_counts(train_sequences, self.n_items)
        return self

    def scores(self, histories: Histories) -> np.ndarray:
        """``(B, n_items)`` scores, higher is better."""
        raise NotImplementedError

    def recommend(self, histories: Histories, k: int, exclude_seen: bool = False) -> np.ndarray:
        out = np.full((len(histories), k), INVALID, dtype=np.int64)
        for lo in range(0, len(histories), self.batch_size):
            batch = histories[lo : lo + self.batch_size]
            s = torch.tensor(self.scores(batch), dtype=torch.float32)
            if self.allowed is not None:
                s[:, torch.from_numpy(~self.allowed)] = -math.inf
            if exclude_seen:
                rows = [i for i, h in enumerate(batch) for _ in h]
                s[rows, [x for h in batch for x in h]] = -math.inf
            kk = min(k, self.n_items)
            val, idx = torch.topk(s, kk, dim=1)  # deterministic on CPU
            idx[torch.isinf(val)] = INVALID
            out[lo : lo + len(batch), :kk] = idx.numpy()
        return out


def item_counts(sequences: Histories, n_items: int) -> np.ndarray:
    flat = np.fromiter((x for s in sequences for x in s), dtype=np.int64)
    return np.bincount(flat, minlength=n_items).astype(np.float64)


class Popularity(ItemRecommender):
    """Global top items by positive count in the training sequences; with ``ecpm`` the
    count is multiplied by the item's eCPM (the "most valuable popular ads" variant).
    Ties go to the lower item id."""

    def __init__(self, n_items: int, ecpm: np.ndarray | None = None,
                 allowed: np.ndarray | None = None) -> None:
        super().__init__(n_items, allowed)
        self.ecpm = None if ecpm is None else np.asarray(ecpm, dtype=np.float64)

    def scores(self, histories: Histories) -> np.ndarray:
        s = self.popularity * (self.ecpm if self.ecpm is not None else 1.0)
        # Tiny decreasing offset: ties broken by item id, not by topk's internals.
        s = s - np.arange(self.n_items) * 1e-9 * max(1.0, float(np.abs(s).max()))
        return np.broadcast_to(s, (len(histories), self.n_items))


class Recent(ItemRecommender):
    """The simplest rule that works where people re-engage: the user's last ``k`` distinct
    items, most recent first, then the global popularity ranking."""

    def scores(self, histories: Histories) -> np.ndarray:
        base = self.popularity / max(1.0, float(self.popularity.max()))  # in [0, 1]
        out = np.repeat(base[None, :] - np.arange(self.n_items) * 1e-12, len(histories), axis=0)
        for u, h in enumerate(histories):
            seen: set[int] = set()
            for item in reversed(h):
                if item not in seen:
                    seen.add(item)
                    out[u, item] = 2.0 + 1.0 / len(seen)  # above any popularity score
        return out


class ItemCFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(3, ge=1, description="items up to this far apart co-occur")
    max_history: int = Field(20, ge=1, description="most recent history items that vote")
    recency_decay: float = Field(0.8, gt=0, le=1, description="vote weight per step back")


class ItemCF(ItemRecommender):
    """Co-visitation item-CF: ``sim(i, j) = Σ 1/gap / sqrt(n_i n_j)`` over pairs within
    ``window`` positions in a training sequence (both directions); a history scores item
    ``j`` as ``Σ_t decay^t sim(h_{-1-t}, j)`` over its ``max_history`` latest items. Items
    no history item co-occurs with rank by popularity (a vanishing tie-break term).

    The harness also uses this branch's top-K as the "other retrieval branch" labels of
    LTRR@K (:func:`~leadre_model.eval.metrics.ltrr_at_k`).
    """

    def __init__(self, n_items: int, cfg: ItemCFConfig | None = None,
                 allowed: np.ndarray | None = None) -> None:
        super().__init__(n_items, allowed)
        self.cfg = cfg or ItemCFConfig()
        self.indptr = np.zeros(n_items + 1, dtype=np.int64)
        self.indices = np.zeros(0, dtype=np.int64)
        self.data = np.zeros(0, dtype=np.float64)

    def fit(self, train_sequences: Histories, valid: Valid | None = None) -> Self:
        super().fit(train_sequences)
        n = self.n_items
        a, b, w = cooccurring_pairs(train_sequences, self.cfg.window)
        if not len(a):
            return self
        keys, inv = np.unique(a * n + b, return_inverse=True)
        sim = np.bincount(inv, weights=w)
        rows, cols = keys // n, keys % n
        sim /= np.sqrt(self.popularity[rows] * self.popularity[cols])
        self.indptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
        self.indices, self.data = cols, sim
        return self

    def scores(self, histories: Histories) -> np.ndarray:
        out = np.zeros((len(histories), self.n_items), dtype=np.float64)
        out += 1e-9 * self.popularity / max(1.0, self.popularity.max())
        for u, h in enumerate(histories):
            for t, item in enumerate(reversed(h[-self.cfg.max_history :])):
                lo, hi = self.indptr[item], self.indptr[item + 1]
                out[u, self.indices[lo:hi]] += self.cfg.recency_decay**t * self.data[lo:hi]
        return out


class SASRecConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: Literal["ce", "bce"] = Field("ce", description="full softmax CE, or BCE with 1 negative")
    max_len: int = Field(50, ge=1)
    hidden: int = Field(64, ge=8)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    # "recency" (the original's: the latest item always sits at the same position) scored
    # R@10 0.0735 vs 0.0694 for "forward" at an equal 120 s budget on amazon-toys, and a
    # list barely moves when the oldest behaviour is dropped (Fig. 5's Dice).
    positions: Literal["recency", "forward"] = Field(
        "recency", description="count positions back from the latest item, or from the oldest")
    # 3e-3 with batch 128 peaks after ~20 epochs on amazon-toys; the original 1e-3 (batch
    # 256) was still near chance after 6 epochs — too slow for a 2-core CPU budget.
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(200, ge=1)
    eval_every: int = Field(2, ge=1, description="epochs between validation rounds")
    patience: int = Field(4, ge=1, description="validation rounds without improvement")
    valid_k: int = Field(10, ge=1, description="early stopping watches NDCG@valid_k")
    valid_users: int | None = Field(4000, ge=1, description="validation subsample (None: all)")
    time_budget_s: float | None = Field(None, gt=0, description="stop training after this")
    seed: int = 0


class _SASRecNet(nn.Module):
    """Causal self-attention over item embeddings with learned positions; item 0 = padding.
    ``recency`` positions count back from the end of the (left-padded) window, as in the
    original; ``forward`` ones count from its first real item (GPT-style: a training prefix
    and an inference history of the same length then see the same positions)."""

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.heads, self.positions = cfg.heads, cfg.positions
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=cfg.hidden,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item.weight, std=cfg.hidden**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq (B, L)`` left-padded with 0 → hidden states ``(B, L, H)``."""
        L = seq.shape[1]
        real = seq > 0
        if self.positions == "forward":
            pos = (torch.arange(L, device=seq.device) - (~real).sum(1, keepdim=True)).clamp(min=0)
        else:
            pos = torch.arange(L - 1, -1, -1, device=seq.device).expand(seq.shape[0], L)
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos(pos)
        x = self.drop(x) * real.unsqueeze(-1)
        # Blocked: future keys and padding keys; each position may always see itself, so a
        # padding row is never fully masked (that would give NaN).
        blocked = torch.ones(L, L, dtype=torch.bool, device=seq.device).triu(1) | ~real[:, None, :]
        blocked &= ~torch.eye(L, dtype=torch.bool, device=seq.device)
        mask = blocked.repeat_interleave(self.heads, dim=0)
        return self.norm(self.encoder(x, mask=mask))


class SASRec(ItemRecommender):
    """SASRec in plain torch (module doc). ``fit`` trains until ``epochs``, early stopping
    (NDCG@valid_k on ``valid``, best weights restored) or ``time_budget_s``; ``log``
    records one dict per validation round. Empty histories fall back to popularity."""

    def __init__(self, n_items: int, cfg: SASRecConfig | None = None,
                 allowed: np.ndarray | None = None, progress: bool = True,
                 device: torch.device | None = None) -> None:
        super().__init__(n_items, allowed)
        self.cfg = cfg or SASRecConfig()
        self.progress = progress
        self.device = device or torch.device("cpu")
        self.log: list[dict[str, float]] = []
        self.info: dict[str, object] = {}
        with self._rng():  # seeded init without touching global RNG
            torch.manual_seed(self.cfg.seed)
            self.net = _SASRecNet(n_items, self.cfg).to(self.device)

    def _rng(self) -> contextlib.AbstractContextManager[None]:
        """Fork the RNGs this model draws from (the CPU's, and its CUDA device's)."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _pad(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        L = max(1, max((len(s) for s in seqs), default=1))
        out = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s):
                out[i, L - len(s) :] = torch.as_tensor(s, dtype=torch.long) + 1
        return out.to(self.device)

    def fit(self, train_sequences: Histories, valid: Valid | None = None) -> Self:
        super().fit(train_sequences)
        cfg = self.cfg
        seqs = [list(s[-(cfg.max_len + 1) :]) for s in train_sequences if len(s) >= 2]
        if not seqs:
            return self
        rng = np.random.default_rng(cfg.seed)
        if valid is not None and cfg.valid_users and len(valid[1]) > cfg.valid_users:
            pick = np.sort(rng.choice(len(valid[1]), cfg.valid_users, replace=False))
            valid = ([valid[0][i] for i in pick], [valid[1][i] for i in pick])
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, bad, t0 = -1.0, None, 0, time.perf_counter()
        best_epoch, epoch, stopped_by = 0, 0, "epochs"
        cap = f", cap {cfg.time_budget_s:.0f}s" if cfg.time_budget_s is not None else ""
        bar = tqdm(range(1, cfg.epochs + 1), desc=f"sasrec-{cfg.loss} (early stop{cap})",
                   disable=not self.progress)
        with self._rng():
            torch.manual_seed(cfg.seed)
            for epoch in bar:
                loss = self._epoch(seqs, opt, rng)
                elapsed = time.perf_counter() - t0
                over_time = cfg.time_budget_s is not None and elapsed > cfg.time_budget_s
                post, stop = {"loss": f"{loss:.4f}"}, over_time
                if valid is not None and (epoch % cfg.eval_every == 0 or stop or epoch == cfg.epochs):
                    ranked = self.recommend(valid[0], cfg.valid_k)
                    score = ndcg_at_k(ranked, np.asarray(valid[1]), cfg.valid_k)
                    self.log.append({"epoch": epoch, "loss": loss, "elapsed_s": elapsed,
                                     f"valid_ndcg@{cfg.valid_k}": score})
                    if score > best:
                        best, best_state, bad = score, copy.deepcopy(self.net.state_dict()), 0
                        best_epoch = epoch
                    else:
                        bad += 1
                    post.update(ndcg=f"{score:.4f}", best=f"{best:.4f}")
                    if bad >= cfg.patience:
                        stopped_by = "early_stopping"
                    stop = stop or bad >= cfg.patience
                bar.set_postfix(post)
                if stop:
                    stopped_by = "time_cap" if over_time and stopped_by != "early_stopping" else stopped_by
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        self.info = {"config": cfg.model_dump(), "epochs_run": epoch, "best_epoch": best_epoch,
                     f"best_valid_ndcg@{cfg.valid_k}": best, "stopped_by": stopped_by,
                     "train_s": round(time.perf_counter() - t0, 2),
                     "train_sequences": len(seqs)}
        return self

    def state(self) -> dict[str, object]:
        """What a cache keeps of a fitted model (weights, log, info)."""
        return {"net": self.net.state_dict(), "log": self.log, "info": self.info,
                "popularity": self.popularity}

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])  # onto this model's device, wherever saved
        self.net.eval()
        self.log, self.info = state["log"], {**state["info"], "from_cache": True}
        self.popularity = np.asarray(state["popularity"])

    def _epoch(self, seqs: list[list[int]], opt: torch.optim.Optimizer,
               rng: np.random.Generator) -> float:
        self.net.train()
        bs = self.cfg.batch_size
        # Length bucketing: sort shuffled chunks of 32 batches by length, so a batch pads to
        # about its own length instead of max_len (most sequences are far shorter).
        order = rng.permutation(len(seqs))
        chunks = [order[lo : lo + 32 * bs] for lo in range(0, len(order), 32 * bs)]
        order = np.concatenate([c[np.argsort([len(seqs[i]) for i in c], kind="stable")]
                                for c in chunks])
        batches = [order[lo : lo + bs] for lo in range(0, len(order), bs)]
        total, n = 0.0, 0
        for b in rng.permutation(len(batches)):
            batch = [seqs[i] for i in batches[b]]
            inp, tgt = self._pad([s[:-1] for s in batch]), self._pad([s[1:] for s in batch])
            h = self.net(inp)[tgt > 0]  # (N, H): positions with a next item
            y = tgt[tgt > 0]  # 1-based item ids
            if self.cfg.loss == "ce":
                logits = h @ self.net.item.weight[1:].T
                loss = F.cross_entropy(logits, y - 1)
            else:
                neg = torch.from_numpy(rng.integers(1, self.n_items + 1, len(y))).to(self.device)
                neg = torch.where(neg == y, neg % self.n_items + 1, neg)  # never the positive
                pos_l = (h * self.net.item(y)).sum(-1)
                neg_l = (h * self.net.item(neg)).sum(-1)
                loss = (F.binary_cross_entropy_with_logits(pos_l, torch.ones_like(pos_l))
                        + F.binary_cross_entropy_with_logits(neg_l, torch.zeros_like(neg_l)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
        return total / max(n, 1)

    @torch.no_grad()
    def scores(self, histories: Histories) -> np.ndarray:
        self.net.eval()
        hist = [list(h[-self.cfg.max_len :]) for h in histories]
        h = self.net(self._pad(hist))[:, -1]  # left-padded: the last slot is the latest item
        s = (h @ self.net.item.weight[1:].T).float().cpu().numpy().astype(np.float64)
        empty = np.array([len(x) == 0 for x in hist])
        if empty.any():
            s[empty] = self.popularity
        return s


__all__ = [
    "ItemCF",
    "ItemCFConfig",
    "ItemRecommender",
    "Popularity",
    "Recent",
    "SASRec",
    "SASRecConfig",
    "item_counts",
]
