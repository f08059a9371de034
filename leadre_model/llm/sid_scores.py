"""The S-ID head's log-probability of given candidate ads, teacher-forced: one prefill per
prompt, then every candidate's S-ID (all but its last token) in one step on the prompt's
KV cache, expanded to the candidates. Scores are normalised over the full vocabulary and
summed over levels, exactly as :func:`~leadre_model.llm.decode.constrained_beam_search`
scores a beam (its oracle :func:`~leadre_model.llm.decode.exhaustive_scores` is this
module's test oracle too).

Used to fuse the two heads of a model with a dense head (llm/dense_head.py ``fuse``): the
dense head proposes its top candidates over all ads, the S-ID head scores exactly those,
without a beam search that could miss them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from leadre_model.llm.decode import _left_pad


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.inference_mode()
def candidate_logprobs(model: PreTrainedModel, ids: Sequence[Sequence[int]], codes: np.ndarray,
                       level_token_ids: Sequence[np.ndarray], pad_id: int,
                       batch_size: int = 32) -> np.ndarray:
    """(prompts, M) log P(candidate's S-ID | prompt) for ``codes`` (prompts, M, levels):
    the S-ID codes of M candidates per prompt (prompt token ids ``ids``)."""
    codes = np.asarray(codes)
    if codes.ndim != 3 or len(codes) != len(ids):
        raise ValueError(f"codes must be (prompts={len(ids)}, M, levels), got {codes.shape}")
    n, m, levels = codes.shape
    out = np.zeros((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return out
    device = model.device
    tokens = [torch.as_tensor(np.asarray(t), dtype=torch.long, device=device)
              for t in level_token_ids[:levels]]
    for lo in range(0, n, batch_size):
        c = torch.as_tensor(codes[lo:lo + batch_size], dtype=torch.long, device=device)
        b = len(c)
        seq = torch.stack([tokens[lv][c[..., lv]] for lv in range(levels)], -1)  # (b, M, L)
        input_ids, mask = _left_pad([list(p) for p in ids[lo:lo + b]], pad_id, device)
        # positions count real tokens only, as the decoder's prefill does
        first = model(input_ids=input_ids, attention_mask=mask,
                      position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=levels > 1,
                      logits_to_keep=1)
        score = _token_logprobs(first.logits[:, -1:].expand(b, m, -1), seq[..., 0])
        if levels > 1:
            cache = first.cache
            cache.reorder_cache(torch.arange(b, device=device).repeat_interleave(m))
            steps = levels - 1
            mask_m = torch.cat([mask.repeat_interleave(m, 0), mask.new_ones(b * m, steps)], 1)
            pos = (mask.sum(1).repeat_interleave(m)[:, None]
                   + torch.arange(steps, device=device)[None])
            logits = model(input_ids=seq[..., :-1].reshape(b * m, steps), attention_mask=mask_m,
                           position_ids=pos, cache=cache, use_cache=True).logits
            rest = _token_logprobs(logits, seq[..., 1:].reshape(b * m, steps)).sum(1)
            score = score + rest.view(b, m)
        del first
        out[lo:lo + b] = score.double().cpu().numpy()
    return out


__all__ = ["candidate_logprobs"]
