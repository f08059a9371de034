"""Where a complete S-ID of an indexed ad ends in a token stream, and which ad it is.

The item-text input (llm/item_text.py) adds an ad's text vector at the last token of its
S-ID; the dense head (llm/dense_head.py) finds its training targets the same way. Both
read the token ids of a forward call, so the model stays a plain causal LM.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from leadre_model.errors import BadInputError
from leadre_model.index.sid_index import SidIndex
from leadre_model.llm.model import sid_level_sizes
from leadre_model.llm.tokenizer import level_token_ids


class SidWindows(torch.nn.Module):
    """Token id → (level, code), and a sorted key table from full S-IDs to index rows
    (buffers, never saved: rebuilt from the index a model is loaded with)."""

    def __init__(self) -> None:
        super().__init__()
        self.levels = 0
        for name in ("level_of", "code_of", "radix", "keys", "rows"):
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def set_table(self, tokenizer: PreTrainedTokenizerBase, index: SidIndex,
                  device: torch.device | str = "cpu") -> None:
        """(Re)build the lookup for ``index`` with the model's S-ID vocabulary."""
        sizes = sid_level_sizes(tokenizer)
        if len(sizes) != index.codes.shape[1]:
            raise BadInputError(f"the tokenizer's S-IDs have {len(sizes)} levels, "
                                f"the index's {index.codes.shape[1]}")
        ids = level_token_ids(tokenizer, sizes)
        vocab = max(len(tokenizer), max(int(a.max()) for a in ids) + 1)
        level_of = torch.full((vocab,), -1, dtype=torch.long)
        code_of = torch.zeros(vocab, dtype=torch.long)
        for level, tok in enumerate(ids):
            level_of[torch.as_tensor(tok)] = level
            code_of[torch.as_tensor(tok)] = torch.arange(len(tok))
        # mixed radix: key = ((c0 * K1 + c1) * K2 + c2) ...
        radix = np.cumprod([1, *sizes[:0:-1]])[::-1].copy()
        # ads whose S-ID the model cannot write (added later, beyond its vocabulary) get none
        fits = np.flatnonzero((index.codes < np.asarray(sizes)).all(axis=1))
        keys, perm = torch.sort(torch.as_tensor(index.codes[fits] @ radix, dtype=torch.long))
        order = torch.as_tensor(fits)[perm]
        self.levels = len(sizes)
        self.level_of, self.code_of = level_of.to(device), code_of.to(device)
        self.radix = torch.as_tensor(radix, dtype=torch.long, device=device)
        self.keys, self.rows = keys.to(device), order.to(device)

    def find(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For every window of ``levels`` tokens of ``input_ids`` (B, T): whether it is the
        complete S-ID of an indexed ad, and that ad's index row (garbage where not), both
        (B, T - levels + 1), window ``j`` ending at token ``j + levels - 1``; None when
        no window is one."""
        n, t = self.levels, input_ids.shape[-1]
        if n == 0 or t < n or len(self.keys) == 0:
            return None
        ids = input_ids.clamp(0, len(self.level_of) - 1)
        level, code = self.level_of[ids], self.code_of[ids]
        ok = level[:, n - 1:] == n - 1
        key = torch.zeros_like(ok, dtype=torch.long)
        for j in range(n):  # window [p - n + 1, p]: level j sits at offset j
            span = slice(j, t - n + 1 + j)
            ok &= level[:, span] == j
            key += code[:, span] * self.radix[j]
        if not bool(ok.any()):
            return None
        pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        return ok & (self.keys[pos] == key), self.rows[pos]

    def at_last_tokens(self, vec: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Per-window vectors ``vec`` (B, W, H) where ``keep`` (B, W), zero elsewhere, moved
        to the token each window ends at: (B, W + levels - 1, H), aligned with the ids."""
        vec = vec * keep.unsqueeze(-1).to(vec.dtype)
        pad = vec.new_zeros(vec.shape[0], self.levels - 1, vec.shape[2])
        return torch.cat([pad, vec], dim=1)


__all__ = ["SidWindows"]
