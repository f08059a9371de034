"""Ad text as input soft tokens (issue "Retrieval quality": the packaged MiniLM's frozen
item-text embeddings for behaviour items).

Every ad of a prompt is written as its S-ID tokens. With ``LLMConfig(item_text=True)`` the
model also gets that ad's frozen sentence embedding (the index's ``embeddings.npy``, the
text the RQ-VAE quantised), through one trained linear map to the model width, added to
the input embedding of the ad's **last** S-ID token. The S-ID says where the ad sits in the
catalog; the text vector tells apart ads that share a prefix, and it exists for every ad
the index knows, new ones included (no ad-id table: the cold-start property holds).

It is a forward hook on the input embedding, so the model stays a plain Hugging Face
causal LM for training, TRL and our decoder: the hook sees the token ids of each call and
adds the vectors where a complete S-ID of an indexed ad ends. A prompt is encoded in one
call (decode.py), so its ads are always complete; single decode steps never are, and the
S-IDs being generated get no text (they are outputs). Only the map's weights are saved
(``leadre_item_text.proj.weight``); the table is rebuilt from the index the model is
loaded with, so ads added by ``leadre index add`` get their text too. The TensorRT-LLM
engine path does not carry the hook (untested there; a model trained with it is served by
the PyTorch engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.errors import BadInputError
from leadre_model.index.sid_index import SidIndex, load_embeddings
from leadre_model.llm.model import ITEM_TEXT_MODULE
from leadre_model.llm.sid_windows import SidWindows

MODULE = ITEM_TEXT_MODULE
CONFIG_KEY = "leadre_item_text_dim"  # in the model's config.json: the text width it expects


class ItemTextInput(torch.nn.Module):
    """The trained map (text width → model width) and the lookup from a complete S-ID in
    the token stream to its ad's text vector (buffers, not saved)."""

    def __init__(self, text_dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(text_dim, hidden, bias=False)
        self.windows = SidWindows()
        self.register_buffer("text", torch.zeros(0), persistent=False)

    def set_table(self, tokenizer: PreTrainedTokenizerBase, index: SidIndex,
                  embeddings: np.ndarray) -> None:
        """(Re)build the lookup for ``index`` (rows of ``embeddings`` = rows of the index)."""
        if len(embeddings) != len(index) or embeddings.shape[1] != self.proj.in_features:
            raise BadInputError(f"item text: {embeddings.shape} embeddings for an index of "
                                f"{len(index)} ads and a map from width {self.proj.in_features}")
        device = self.proj.weight.device
        self.windows.set_table(tokenizer, index, device)
        self.text = torch.as_tensor(embeddings, dtype=self.proj.weight.dtype, device=device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The vectors to add to the input embeddings of ``input_ids`` (B, T), or None
        when no complete S-ID of an indexed ad is in them."""
        hit = self.windows.find(input_ids)
        if hit is None:
            return None
        found, rows = hit
        return self.windows.at_last_tokens(self.proj(self.text[rows]), found)


def _hook(module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    add = module.leadre_owner(args[0]) if args else None  # type: ignore[operator]
    return out if add is None else out + add.to(out.dtype)


def attach_item_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     index: SidIndex, embeddings: np.ndarray, seed: int = 0) -> ItemTextInput:
    """Give ``model`` the text input (a fresh map, seeded; its output starts at the norm of
    the token rows so the text is heard from the first step) and remember the text width in
    its config, so :func:`restore_item_text` knows to put it back after loading."""
    emb = model.get_input_embeddings()
    adapter = _new_adapter(model, embeddings.shape[1])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scale = float(emb.weight.norm(dim=1).mean())
        text_norm = float(np.linalg.norm(embeddings, axis=1).mean()) or 1.0
        w = torch.randn(adapter.proj.weight.shape, generator=gen)
        w *= scale / (text_norm * adapter.proj.weight.shape[0] ** 0.5)
        adapter.proj.weight.copy_(w.to(adapter.proj.weight.dtype))
    adapter.set_table(tokenizer, index, embeddings)
    _install(model, adapter)
    model.config.update({CONFIG_KEY: int(embeddings.shape[1])})
    return adapter


def _new_adapter(model: PreTrainedModel, text_dim: int) -> ItemTextInput:
    weight = model.get_input_embeddings().weight
    return ItemTextInput(text_dim, weight.shape[1]).to(weight.device)


def _install(model: PreTrainedModel, adapter: ItemTextInput) -> None:
    model.add_module(MODULE, adapter)
    emb = model.get_input_embeddings()
    # a plain attribute, not a submodule: the adapter is saved once, under MODULE
    object.__setattr__(emb, "leadre_owner", adapter)
    emb.register_forward_hook(_hook)


def item_text_dim(model: PreTrainedModel) -> int | None:
    """The text width a loaded model was trained with, None if it takes no item text."""
    dim = getattr(model.config, CONFIG_KEY, None)
    return int(dim) if dim else None


def restore_item_text(model: PreTrainedModel, model_dir: str | Path,
                      tokenizer: PreTrainedTokenizerBase, index: SidIndex,
                      index_dir: str | Path) -> ItemTextInput | None:
    """Put the saved map of a model trained with item text back (its weights from the
    model's safetensors), with the table of ``index`` (its embeddings read from
    ``index_dir`` only then); None for a model without it."""
    dim = item_text_dim(model)
    if dim is None:
        return None
    key = f"{MODULE}.proj.weight"
    weight = None
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if key in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                weight = f.get_tensor(key)
    if weight is None:
        raise BadInputError(f"{model_dir}: config says the model takes item text, but no "
                            f"{key} is saved")
    adapter = _new_adapter(model, dim)
    with torch.no_grad():
        adapter.proj.weight.copy_(weight.to(adapter.proj.weight.dtype))
    adapter.set_table(tokenizer, index, load_embeddings(Path(index_dir)))
    _install(model, adapter)
    return adapter


__all__ = ["ItemTextInput", "attach_item_text", "item_text_dim", "restore_item_text"]
