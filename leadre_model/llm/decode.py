"""Trie-constrained beam search over S-IDs (paper §3.4, Algorithm 2), batched, with a KV cache.

One prefill runs every prompt of a batch (left-padded, so each prompt's last token is in the
last column; prompts are bucketed by length first, so little is padding); then one decoding
step per S-ID level feeds only the B chosen tokens of each prompt. At level l a beam scores
only its trie node's active children: the trie lives on the model's device as CSR tensors
(:mod:`leadre_model.llm.trie_tensors`), a step gathers every beam's children as one padded
(beams, D_l) block, reads the log-probabilities of those tokens only, and keeps the B best
(beam, child) pairs per prompt with one top-k. Beam states, scores and histories stay on the
device: no host round trip per level, no Python per beam, no ``generate()``; the same code
runs on a CPU and on a GPU.

Two engines compute a step's logits, with identical results:

* ``shared_prefix`` (default where supported: Llama, Qwen2, Qwen3, Mistral): the prompt's
  KV stays stored once per prompt; only the ≤ L generated tokens' KV is kept per beam and
  reordered (:mod:`leadre_model.llm.prefix_attention`). No copy of the prompt KV per beam.
* ``reorder`` (any Hugging Face causal LM): the prompt KV is expanded to every beam and
  reordered with ``Cache.reorder_cache`` at every level, as HF beam search does.

Scores are log-probabilities normalised over the FULL vocabulary: ``logits[code] -
logsumexp(all logits)``, summed over levels. That is exactly what SFT trains (plain
next-token cross-entropy over the whole vocabulary), and what HF beam search with a
``prefix_allowed_tokens_fn`` computes (log_softmax first, mask after). The mass the model
puts on non-S-ID tokens or on invalid codes is therefore *not* renormalised onto the valid
children; a well-trained model puts almost none there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.index.trie import SidTrie
from leadre_model.llm.prefix_attention import (
    ATTN_NAME,
    STATE_KWARG,
    SharedPrefixState,
    attention_implementation,
    supports_shared_prefix,
)
from leadre_model.llm.trie_tensors import (
    excluded,
    full_grid_children,
    sorted_exclusions,
    trie_tensors,
)

Prompts = Sequence[str] | Sequence[Sequence[int]]
Engine = Literal["auto", "shared_prefix", "reorder"]


@dataclass(frozen=True)
class Hit:
    """One generated ad: its index row, S-ID codes and total log-probability."""

    row: int
    codes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class Beams:
    """The final beams of one prompt, best first: codes (w, L) int64, scores (w,) float64
    and, for a constrained search, the ads' index rows (w,) int64."""

    codes: np.ndarray
    scores: np.ndarray
    rows: np.ndarray | None = None


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Prompts) -> list[list[int]]:
    """Token ids per prompt: strings go through ``tokenizer`` with its own special-token
    policy (training must tokenize prompts the same way); id lists pass through."""
    if not prompts:
        return []
    if all(isinstance(p, str) for p in prompts):
        ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    else:
        ids = [[int(t) for t in p] for p in prompts]
    if any(len(p) == 0 for p in ids):
        raise ValueError("empty prompt")
    return ids


def constrained_beam_search(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    trie: SidTrie,
    level_token_ids: Sequence[np.ndarray],
    beam_width: int,
    top_k: int | None = None,
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: bool = False,
    exclude: Sequence[Collection[int]] | None = None,
    cold_nodes: Sequence[np.ndarray] | None = None,
) -> list[list[Hit]]:
    """Top ads per prompt by trie-constrained beam search (full-vocabulary log-probs).

    Args:
        prompts: strings, or token-id lists (already tokenized, no padding).
        level_token_ids: ``[l][code]`` → token id (:func:`~leadre_model.llm.tokenizer.level_token_ids`).
        beam_width: B, beams kept per prompt at every level.
        top_k: hits returned per prompt (≤ B; default B).
        batch_size: prompts per forward pass (each is expanded to B beams).
        engine: ``auto`` (shared_prefix where the architecture supports it), or force one.
        exclude: per prompt, index rows that must not be returned (e.g. ads the user
            already converted on): masked at the last level, per request, on top of the
            shared trie.
        cold_nodes: from :func:`cold_prefix_nodes`: trie nodes below level 0 that only ads
            added after the model was trained (``leadre index add``) lead to. The model never
            generated those paths, so a step into one scores the parent's probability shared
            evenly among its valid children instead of the model's log-probability: a new
            ad is reached through its semantic first code, then treated like an average
            sibling (cold start without retraining).

    Returns, per prompt, at most ``top_k`` distinct hits sorted by log-probability, best
    first; fewer when the trie has fewer active ads below the surviving beams. Every row is
    an active ad of ``trie``. With B ≥ the number of active ads the search is exhaustive.
    """
    top_k = beam_width if top_k is None else top_k
    if beam_width >= 1 and not 1 <= top_k <= beam_width:
        raise ValueError(f"top_k must be in [1, beam_width={beam_width}], got {top_k}")
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(prompts)} prompts")
    beams = beam_search_codes(model, tokenizer, prompts, level_token_ids, beam_width, trie=trie,
                              batch_size=batch_size, engine=engine, progress=progress,
                              exclude=exclude, cold_nodes=cold_nodes)
    return [_hits(trie, b, top_k) for b in beams]


def beam_search_codes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    level_token_ids: Sequence[np.ndarray],
    beam_width: int,
    trie: SidTrie | None = None,
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: bool = False,
    exclude: Sequence[Collection[int]] | None = None,
    cold_nodes: Sequence[np.ndarray] | None = None,
) -> list[Beams]:
    """The beam search itself, per prompt its final beams. With ``trie=None`` the same
    search runs unconstrained over each level's S-ID tokens (any code tuple, existing ad or
    not): the peer for measuring what the constraint costs."""
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = _level_tokens(level_token_ids, model.device, trie)
    ids = encode_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Longest first, in chunks of similar length: little padding in each prefill.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    out: list[Beams | None] = [None] * len(ids)
    try:
        for chunk in tqdm(chunks, desc="beam search", unit=" batch", disable=not progress):
            batch = [ids[i] for i in chunk]
            shared = _use_shared_prefix(model, engine, max(map(len, batch)) + len(tokens))
            excl = None if exclude is None or trie is None else [exclude[i] for i in chunk]
            for i, b in zip(chunk, _search(model, batch, pad_id, trie, tokens, beam_width, shared,
                                           excl, cold_nodes)):
                out[i] = b
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _use_shared_prefix(model: PreTrainedModel, engine: Engine, max_length: int) -> bool:
    if engine == "reorder":
        return False
    ok = supports_shared_prefix(model, max_length)
    if engine == "shared_prefix" and not ok:
        raise ValueError(f"engine 'shared_prefix' does not support {model.config.model_type!r} "
                         f"at {max_length} tokens; use engine='reorder' or 'auto'")
    return ok


class _ReorderSteps:
    """Generic engine: the prompt KV expanded to every beam, reordered each level."""

    def __init__(self, model: PreTrainedModel, prompt_mask: torch.Tensor, cache: object) -> None:
        self.model, self.prompt_mask, self.cache = model, prompt_mask, cache
        self.lengths = prompt_mask.sum(1)

    def step(self, parent: torch.Tensor, tokens: torch.Tensor, level: int, width: int) -> torch.Tensor:
        self.cache.reorder_cache(parent)  # type: ignore[attr-defined]
        n = len(self.prompt_mask)
        mask = torch.cat([self.prompt_mask.repeat_interleave(width, 0),
                          self.prompt_mask.new_ones(n * width, level + 1)], dim=1)
        position = (self.lengths + level).repeat_interleave(width)[:, None]
        return self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position,
                          cache=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]


class _SharedPrefixSteps:
    """Fast engine: prompt KV once per prompt, generated KV per beam (module doc)."""

    def __init__(self, model: PreTrainedModel, prompt_mask: torch.Tensor, cache: object) -> None:
        self.model = model
        self.state = SharedPrefixState.from_cache(cache, prompt_mask)
        self.lengths = prompt_mask.sum(1)

    def step(self, parent: torch.Tensor, tokens: torch.Tensor, level: int, width: int) -> torch.Tensor:
        self.state.reorder(parent)
        position = (self.lengths + level).repeat_interleave(width)[:, None]
        with attention_implementation(self.model, ATTN_NAME):
            return self.model(input_ids=tokens[:, None], position_ids=position, use_cache=False,
                              logits_to_keep=1, **{STATE_KWARG: self.state}).logits[:, -1]


@torch.inference_mode()
def _search(model: PreTrainedModel, ids: list[list[int]], pad_id: int, trie: SidTrie | None,
            tokens: list[torch.Tensor], beam_width: int, shared: bool,
            exclude: Sequence[Collection[int]] | None = None,
            cold_nodes: Sequence[np.ndarray] | None = None) -> list[Beams]:
    device, n = model.device, len(ids)
    input_ids, prompt_mask = _left_pad(ids, pad_id, device)
    # Left padding shifts tokens right; positions count real tokens only, so a prompt gets
    # the same rotary positions (hence the same logits) alone or in any batch.
    out = model(input_ids=input_ids, attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    steps = (_SharedPrefixSteps if shared else _ReorderSteps)(model, prompt_mask, out.cache)
    del out
    # Everything below stays on the model's device: the trie's tensors, beam states,
    # scores and histories; the host sees the result once, at the end.
    tt = trie_tensors(trie, device) if trie is not None else None
    excl = sorted_exclusions(exclude, device) if tt is not None and exclude is not None else None
    cold = ([tt.node_flags(lv, c) if lv > 0 and len(c) else None
             for lv, c in enumerate(cold_nodes)] if tt is not None and cold_nodes is not None
            else [None] * len(tokens))
    width = 1  # beams per prompt so far: 1 (the root), then min(B, width * D_l)
    nodes = torch.zeros(n, dtype=torch.long, device=device)  # trie node per beam (root)
    score = torch.zeros(n, device=device)
    history = torch.zeros((n, 0), dtype=torch.long, device=device)
    prompt_of = torch.arange(n, device=device)[:, None]
    last = len(tokens) - 1
    for level, level_ids in enumerate(tokens):
        kids = (tt.children(level, nodes) if tt is not None
                else full_grid_children(len(level_ids), len(nodes), device))
        valid = kids.valid
        cand = score[:, None] + _full_vocab_logprobs(logits, level_ids[kids.codes])  # (n·w, D)
        if level == last and excl is not None:
            rows = tt.leaf_rows[kids.nodes].reshape(n, -1)  # type: ignore[union-attr]
            valid = valid & ~excluded(excl, rows).view_as(valid)
        if cold[level] is not None:
            # an added ad's step: the parent's score shared evenly among its valid children
            share = score[:, None] - valid.sum(1, keepdim=True).clamp(min=1).to(score.dtype).log()
            cand = torch.where(cold[level][kids.nodes] & valid, share, cand)  # type: ignore[index]
        cand = cand.masked_fill(~valid, float("-inf"))
        fan = cand.shape[1]
        new_width = min(beam_width, width * fan)
        top, idx = cand.view(n, width * fan).topk(new_width, dim=1)  # sorted: best first
        parent = (prompt_of * width + idx // fan).reshape(-1)  # global row of the parent beam
        code = kids.codes.reshape(n, -1).gather(1, idx).reshape(-1)
        # Dead beams (fewer valid prefixes than B) keep -inf and node -1: no children.
        child = kids.nodes.reshape(n, -1).gather(1, idx).reshape(-1)
        score, width = top.reshape(-1), new_width
        nodes = torch.where(torch.isfinite(score), child, -1)
        history = torch.cat([history[parent], code[:, None]], dim=1)
        if level < last:
            logits = steps.step(parent, level_ids[code], level, width)
    scores = score.double().cpu().numpy().reshape(n, width)
    codes = history.cpu().numpy().reshape(n, width, -1)
    rows = (tt.leaf_rows[nodes.clamp(min=0)].where(nodes >= 0, -1).cpu().numpy().reshape(n, width)
            if tt is not None else None)
    live = np.isfinite(scores)
    if live.all():  # the usual case: views, no copies
        return [Beams(codes[p], scores[p], None if rows is None else rows[p]) for p in range(n)]
    return [Beams(codes[p][live[p]], scores[p][live[p]], None if rows is None else rows[p][live[p]])
            for p in range(n)]


@torch.inference_mode()
def candidate_scores(model: PreTrainedModel, ids: Sequence[Sequence[int]], codes: np.ndarray,
                     level_token_ids: Sequence[np.ndarray], pad_id: int, batch_size: int = 64,
                     engine: Engine = "auto") -> np.ndarray:
    """(prompts, M): the log-probability of given S-IDs ``codes`` (prompts, M, levels) after
    each prompt (token ids ``ids``), scored as the beam search scores a beam: one prefill
    per prompt, then one step per level for its M candidates as if they were its beams
    (teacher forcing on the same engines). For the dense head's ``fuse`` (dense_head.py):
    the S-ID head's view of candidates the beam could have missed."""
    codes = np.asarray(codes)
    if codes.ndim != 3 or len(codes) != len(ids):
        raise ValueError(f"codes must be (prompts={len(ids)}, M, levels), got {codes.shape}")
    n, m, levels = codes.shape
    out = np.zeros((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return out
    tokens = [torch.as_tensor(np.asarray(t), dtype=torch.long, device=model.device)
              for t in level_token_ids[:levels]]
    order = sorted(range(n), key=lambda i: -len(ids[i]))  # similar lengths: little padding
    for lo in range(0, n, batch_size):
        chunk = order[lo:lo + batch_size]
        batch = [list(ids[i]) for i in chunk]
        c = torch.as_tensor(codes[chunk], dtype=torch.long, device=model.device)
        seq = torch.stack([tokens[lv][c[..., lv]] for lv in range(levels)], -1).view(-1, levels)
        input_ids, prompt_mask = _left_pad(batch, pad_id, model.device)
        first = model(input_ids=input_ids, attention_mask=prompt_mask,
                      position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
                      use_cache=True, logits_to_keep=1)
        logits = first.logits[:, -1].repeat_interleave(m, 0)
        shared = _use_shared_prefix(model, engine, max(map(len, batch)) + levels)
        steps = (_SharedPrefixSteps if shared else _ReorderSteps)(model, prompt_mask, first.cache)
        del first
        parent = torch.arange(len(chunk), device=model.device).repeat_interleave(m)
        score = torch.zeros(len(parent), device=model.device)
        for level in range(levels):
            score += _full_vocab_logprobs(logits, seq[:, level:level + 1])[:, 0]
            if level < levels - 1:
                logits = steps.step(parent, seq[:, level], level, m)
                parent = torch.arange(len(parent), device=model.device)
        out[chunk] = score.double().cpu().numpy().reshape(len(chunk), m)
    return out


def cold_prefix_nodes(trie: SidTrie, codes: np.ndarray, cold: np.ndarray) -> list[np.ndarray]:
    """Per level l, the sorted node ids one level down that only the ads with ``cold`` True
    (``codes``: (N, L) S-IDs of every indexed ad) lead to; see ``cold_nodes``."""
    nodes = np.zeros(len(codes), dtype=np.int64)
    out = []
    for level in range(trie.num_levels):
        nodes = trie.step(level, nodes, codes[:, level])
        warm = set(nodes[~cold & (nodes >= 0)].tolist())
        out.append(np.array(sorted(set(nodes[cold & (nodes >= 0)].tolist()) - warm),
                            dtype=np.int64))
    return out


def _full_vocab_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax over the whole vocabulary, read at each row's own candidate tokens
    (``token_ids`` (rows, D)) only: one logsumexp and one gather, never the full (rows, V)
    log-prob matrix."""
    logits = logits.float()
    return logits.gather(1, token_ids) - torch.logsumexp(logits, dim=-1, keepdim=True)


def _hits(trie: SidTrie, beams: Beams, k: int) -> list[Hit]:
    """The best ``k`` beams as hits."""
    codes = beams.codes[:k]
    rows = beams.rows[:k] if beams.rows is not None else trie.lookup(codes)
    if (rows < 0).any():  # a bug, never a model quirk: the trie chose every code
        raise RuntimeError("constrained search produced an S-ID that is not an active ad")
    # one tolist per array: Python ints and floats without a numpy scalar per field
    return [Hit(r, tuple(c), s)
            for r, c, s in zip(rows.tolist(), codes.tolist(), beams.scores[:k].tolist())]


def _left_pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, p in enumerate(ids):
        input_ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return input_ids.to(device), mask.to(device)


def _level_tokens(level_token_ids: Sequence[np.ndarray], device: torch.device,
                  trie: SidTrie | None) -> list[torch.Tensor]:
    if trie is not None:
        if len(level_token_ids) != trie.num_levels:
            raise ValueError(f"level_token_ids has {len(level_token_ids)} levels, the trie {trie.num_levels}")
        for level, (ids, k) in enumerate(zip(level_token_ids, trie.level_sizes)):
            if len(ids) != k:
                raise ValueError(f"level {level}: {len(ids)} token ids for {k} codes")
    return [torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device) for ids in level_token_ids]


@torch.inference_mode()
def exhaustive_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[int],
    trie: SidTrie,
    level_token_ids: Sequence[np.ndarray],
    chunk: int = 256,
) -> list[Hit]:
    """Every active ad scored by running the model on prompt + its full S-ID (no cache, no
    padding, no masks): the test oracle for :func:`constrained_beam_search`. Sorted best
    first. O(ads) forward passes' worth of compute — small tries only."""
    tokens = _level_tokens(level_token_ids, model.device, trie)
    prompt_ids = torch.as_tensor(encode_prompts(tokenizer, [prompt])[0], device=model.device)
    codes, rows, active = trie.to_arrays()
    codes, rows = codes[active], rows[active]
    seq = torch.stack([tokens[lv][torch.as_tensor(codes[:, lv])] for lv in range(trie.num_levels)], 1)
    t = len(prompt_ids)
    scores = []
    for s in seq.split(chunk):
        inp = torch.cat([prompt_ids.expand(len(s), t), s[:, :-1].to(model.device)], dim=1)
        logits = model(input_ids=inp, use_cache=False).logits[:, t - 1:].float()
        scores.append(torch.log_softmax(logits, -1).gather(-1, s[..., None]).squeeze(-1).sum(1))
    total = torch.cat(scores).cpu().numpy() if scores else np.zeros(0)
    order = np.argsort(-total, kind="stable")
    return [Hit(int(rows[i]), tuple(int(c) for c in codes[i]), float(total[i])) for i in order]


__all__ = ["Beams", "Engine", "Hit", "beam_search_codes", "candidate_scores", "cold_prefix_nodes",
           "constrained_beam_search",
           "encode_prompts", "exhaustive_scores"]
