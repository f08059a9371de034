"""Shared-prefix attention for beam search: the prompt's KV is stored once per prompt, not
once per beam.

All B beams of one prompt share the prompt's keys and values; they differ only in the ≤ L
S-ID tokens generated so far. The usual beam search (HF ``generate``, and a KV cache
reordered with ``index_select``) copies the whole prompt KV to every beam and copies it
again at every level when beams are reordered — for a 500-token prompt and 4 generated
tokens that is >99 % of the cache traffic, and it was ~70 % of our decoder's time. Here a
decoding step attends over ``[prompt KV of its prompt (n, T)] ‖ [own generated KV (n·B, l)]``
with one softmax over both parts: the B beams' queries meet the prompt keys in one
batched matmul per prompt (they play the role of query positions), and only the tiny
generated part is reordered when beams are re-ranked.

The function plugs into transformers' ``AttentionInterface`` (registered once under
:data:`ATTN_NAME`), so the model's own projections, norms, rotary embeddings and MLPs run
unchanged; it is used only for the per-level steps (the prefill runs the model's normal
attention). Exact, up to float rounding, for decoder-only models whose attention calls the
interface with post-rotary ``(query, key, value)`` and no logit soft-capping: Llama,
Qwen2, Qwen3, Mistral (:func:`supports_shared_prefix`). Other models take the generic
reorder path in :mod:`leadre_model.llm.decode`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

ATTN_NAME = "leadre_shared_prefix"
STATE_KWARG = "leadre_prefix"
# model_type values whose attention modules follow the interface contract used here.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass
class SharedPrefixState:
    """Per-layer prompt KV (n prompts) and generated-token KV (n·B beams, prompt-major)."""

    prefix_keys: list[torch.Tensor]  # [layer] (n, kv_heads, T, d)
    prefix_values: list[torch.Tensor]
    prefix_bias: torch.Tensor  # (n, 1, 1, 1, T): 0 for real tokens, -inf for left padding
    beam_keys: list[torch.Tensor | None] = field(default_factory=list)  # [layer] (n·B, kv, l, d)
    beam_values: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def from_cache(cls, cache: object, prompt_mask: torch.Tensor) -> SharedPrefixState:
        """Take the prefill's KV (a transformers ``Cache`` with ``.layers[i].keys``)."""
        layers = cache.layers  # type: ignore[attr-defined]
        bias = torch.zeros(prompt_mask.shape, dtype=torch.float32, device=prompt_mask.device)
        bias.masked_fill_(prompt_mask == 0, float("-inf"))
        return cls([lay.keys for lay in layers], [lay.values for lay in layers],
                   bias[:, None, None, None, :], [None] * len(layers), [None] * len(layers))

    def reorder(self, parent: torch.Tensor) -> None:
        """Keep the generated KV of the surviving beams (``parent``: global beam rows)."""
        for store in (self.beam_keys, self.beam_values):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t.index_select(0, parent)


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """One decoding step: ``query`` (n·B, H, 1, d), ``key``/``value`` (n·B, KV, 1, d) of
    the new token (no cache object is passed, so nothing was concatenated). Returns the
    attention output as (n·B, 1, H, d), as transformers' own attention functions do."""
    state = kwargs.get(STATE_KWARG)
    if not isinstance(state, SharedPrefixState):
        raise TypeError(f"{ATTN_NAME} attention needs the {STATE_KWARG}= keyword argument")
    if query.shape[2] != 1 or (kwargs.get("softcap") is not None):
        raise RuntimeError(f"{ATTN_NAME}: one query token per beam and no soft-capping")
    layer = module.layer_idx  # type: ignore[attr-defined]
    rows, heads, _, dim = query.shape
    pk, pv = state.prefix_keys[layer], state.prefix_values[layer]
    n, kv_heads = pk.shape[0], pk.shape[1]
    beams, groups = rows // n, heads // kv_heads
    scaling = dim ** -0.5 if scaling is None else scaling

    bk, bv = state.beam_keys[layer], state.beam_values[layer]
    bk = key if bk is None else torch.cat([bk, key], dim=2)
    bv = value if bv is None else torch.cat([bv, value], dim=2)
    state.beam_keys[layer], state.beam_values[layer] = bk, bv

    dtype = query.dtype
    # Layout (n, KV, G, B, ·): beams of one prompt become query rows against its prefix.
    q = query.reshape(n, beams, kv_heads, groups, dim).permute(0, 2, 3, 1, 4).float()
    s_prefix = torch.matmul(q.reshape(n, kv_heads, groups * beams, dim),
                            pk.float().transpose(-1, -2)).view(n, kv_heads, groups, beams, -1)
    s_prefix = s_prefix * scaling + state.prefix_bias
    kb = bk.float().reshape(n, beams, kv_heads, -1, dim)  # (n, B, KV, l, d)
    s_beam = torch.einsum("nkgbd,nbkld->nkgbl", q, kb) * scaling
    t = s_prefix.shape[-1]
    probs = torch.softmax(torch.cat([s_prefix, s_beam], dim=-1), dim=-1)
    p_prefix, p_beam = probs[..., :t], probs[..., t:]
    out = torch.matmul(p_prefix.reshape(n, kv_heads, groups * beams, t), pv.float())
    out = out.view(n, kv_heads, groups, beams, dim)
    out = out + torch.einsum("nkgbl,nbkld->nkgbd", p_beam, bv.float().reshape(n, beams, kv_heads, -1, dim))
    # → (n·B, 1, H, d), heads ordered (kv_head, group) as repeat_kv does.
    out = out.permute(0, 3, 1, 2, 4).reshape(rows, 1, heads, dim)
    return out.to(dtype), None


def _no_mask(**_: object) -> None:
    """The step builds its own mask (prompt padding only: a beam sees all its tokens)."""


# transformers' documented extension points; registering the same name again is a no-op.
AttentionInterface.register(ATTN_NAME, shared_prefix_attention)
AttentionMaskInterface.register(ATTN_NAME, _no_mask)


def supports_shared_prefix(model: PreTrainedModel, max_length: int) -> bool:
    """True when :func:`shared_prefix_attention` is exact for ``model`` on sequences of up
    to ``max_length`` tokens (a sliding window shorter than that would be ignored)."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        return False
    window = getattr(cfg, "sliding_window", None)
    sliding = getattr(cfg, "use_sliding_window", window is not None)
    if sliding and window is not None and max_length > window:
        return False
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers is not None and all(hasattr(lay.self_attn, "layer_idx") for lay in layers)


@contextlib.contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Run ``model`` with attention ``name`` inside the block (restored after). The model
    must not be used by another thread meanwhile — as for any stateful decode."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = saved


__all__ = [
    "ATTN_NAME",
    "STATE_KWARG",
    "SharedPrefixState",
    "attention_implementation",
    "shared_prefix_attention",
    "supports_shared_prefix",
]
