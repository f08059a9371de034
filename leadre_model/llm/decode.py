"""Trie-constrained beam search over S-IDs (paper §3.4, Algorithm 2), batched, with a KV cache.

One prefill runs every prompt of a batch (left-padded, so each prompt's last token is in the
last column); then one decoding step per S-ID level feeds only the B chosen tokens of each
prompt. At level l a beam scores only the codes its trie node allows (``trie.valid_mask``,
one numpy gather for the whole batch); all other codes get -inf. The B best (beam, code)
pairs per prompt survive; the KV cache follows them with one ``Cache.reorder_cache`` (an
``index_select`` on the batch axis of every layer) — no Python per beam, no ``generate()``.

Scores are log-probabilities normalised over the FULL vocabulary: ``logits[code] -
logsumexp(all logits)``, summed over levels. That is exactly what SFT trains (plain
next-token cross-entropy over the whole vocabulary), and what HF beam search with a
``prefix_allowed_tokens_fn`` computes (log_softmax first, mask after). The mass the model
puts on non-S-ID tokens or on invalid codes is therefore *not* renormalised onto the valid
children; a well-trained model puts almost none there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.index.trie import SidTrie

Prompts = Sequence[str] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class Hit:
    """One generated ad: its index row, S-ID codes and total log-probability."""

    row: int
    codes: tuple[int, ...]
    logprob: float


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
) -> list[list[Hit]]:
    """Top ads per prompt by trie-constrained beam search (full-vocabulary log-probs).

    Args:
        prompts: strings, or token-id lists (already tokenized, no padding).
        level_token_ids: ``[l][code]`` → token id (:func:`~leadre_model.llm.tokenizer.level_token_ids`).
        beam_width: B, beams kept per prompt at every level.
        top_k: hits returned per prompt (≤ B; default B).
        batch_size: prompts per forward pass (each is expanded to B beams).

    Returns, per prompt, at most ``top_k`` distinct hits sorted by log-probability, best
    first; fewer when the trie has fewer active ads below the surviving beams. Every row is
    an active ad of ``trie``. With B ≥ the number of active ads the search is exhaustive.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    top_k = beam_width if top_k is None else top_k
    if not 1 <= top_k <= beam_width:
        raise ValueError(f"top_k must be in [1, beam_width={beam_width}], got {top_k}")
    tokens = _level_tokens(trie, level_token_ids, model.device)
    ids = encode_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        hits: list[list[Hit]] = []
        for start in range(0, len(ids), batch_size):
            hits += _search(model, ids[start:start + batch_size], pad_id, trie, tokens, beam_width)
    finally:
        model.train(was_training)
    return [h[:top_k] for h in hits]


@torch.inference_mode()
def _search(model: PreTrainedModel, ids: list[list[int]], pad_id: int, trie: SidTrie,
            tokens: list[torch.Tensor], beam_width: int) -> list[list[Hit]]:
    device, n = model.device, len(ids)
    input_ids, prompt_mask = _left_pad(ids, pad_id, device)
    lengths = prompt_mask.sum(1)
    # Left padding shifts tokens right; positions count real tokens only, so a prompt gets
    # the same rotary positions (hence the same logits) alone or in any batch.
    out = model(input_ids=input_ids, attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1]
    width = 1  # beams per prompt so far: 1 (the root), then min(B, width * K_l)
    nodes = trie.root_state(n)
    score = torch.zeros(n, device=device)
    history = np.zeros((n, 0), dtype=np.int64)
    prompt_of = torch.arange(n, device=device)[:, None]
    for level, level_ids in enumerate(tokens):
        k = len(level_ids)
        logp = _full_vocab_logprobs(logits, level_ids)  # (n * width, K)
        valid = torch.from_numpy(trie.valid_mask(level, nodes)).to(device)
        cand = (score[:, None] + logp).masked_fill(~valid, float("-inf")).view(n, width * k)
        new_width = min(beam_width, width * k)
        top, idx = cand.topk(new_width, dim=1)  # sorted: best first
        parent = (prompt_of * width + idx // k).reshape(-1)  # global row of the parent beam
        code = (idx % k).reshape(-1)
        parent_np, code_np = parent.cpu().numpy(), code.cpu().numpy()
        score, width = top.reshape(-1), new_width
        alive = torch.isfinite(score).cpu().numpy()
        # Dead beams (fewer valid prefixes than B) keep -inf and node -1: no children.
        nodes = np.where(alive, trie.step(level, nodes[parent_np], code_np), -1)
        history = np.concatenate([history[parent_np], code_np[:, None]], axis=1)
        if level + 1 == len(tokens):
            break
        cache.reorder_cache(parent)
        mask = torch.cat([prompt_mask.repeat_interleave(width, 0),
                          prompt_mask.new_ones(n * width, level + 1)], dim=1)
        position = (lengths + level).repeat_interleave(width)[:, None]
        logits = model(input_ids=level_ids[code][:, None], attention_mask=mask,
                       position_ids=position, past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
    return _hits(trie, history, score.float().cpu().numpy(), n, width)


def _full_vocab_logprobs(logits: torch.Tensor, level_ids: torch.Tensor) -> torch.Tensor:
    """log softmax over the whole vocabulary, read at this level's tokens only (never the
    full (rows, V) log-prob matrix: one logsumexp and one gather)."""
    logits = logits.float()
    return logits[:, level_ids] - torch.logsumexp(logits, dim=-1, keepdim=True)


def _hits(trie: SidTrie, history: np.ndarray, score: np.ndarray, n: int, width: int) -> list[list[Hit]]:
    alive = np.isfinite(score)
    rows = np.full(len(score), -1, dtype=np.int64)
    rows[alive] = trie.lookup(history[alive])
    if (rows[alive] < 0).any():  # a bug, never a model quirk: the trie chose every code
        raise RuntimeError("constrained search produced an S-ID that is not an active ad")
    out: list[list[Hit]] = []
    for p in range(n):
        beams = range(p * width, (p + 1) * width)
        out.append([Hit(int(rows[b]), tuple(int(c) for c in history[b]), float(score[b]))
                    for b in beams if alive[b]])
    return out


def _left_pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, p in enumerate(ids):
        input_ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return input_ids.to(device), mask.to(device)


def _level_tokens(trie: SidTrie, level_token_ids: Sequence[np.ndarray],
                  device: torch.device) -> list[torch.Tensor]:
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
    tokens = _level_tokens(trie, level_token_ids, model.device)
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


__all__ = ["Hit", "constrained_beam_search", "encode_prompts", "exhaustive_scores"]
