"""A trained model with the index it decodes over: model, tokenizer, manifest, S-ID index,
trie and per-level token ids, assembled once, and :meth:`SidRetriever.retrieve` (the
trie-constrained beam search of decode.py) over them.

Every consumer of a trained model goes through it: the ``leadre`` demo, the evaluation
harness (``eval/leadre_retriever.py``), training where it decodes (DPO pairs, validation
rounds) and the inference server's bundle. Level sizes come from the index (the trie's),
so the model's S-ID vocabulary and the trie's masks always line up.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.errors import BadInputError
from leadre_model.index.sid_index import SidIndex, load_index, load_trie
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import (
    Hit,
    Prompts,
    cold_prefix_nodes,
    constrained_beam_search,
    encode_prompts,
)
from leadre_model.llm.dense_head import (
    Rerank,
    dense_head_of,
    ensemble_log_probs,
    rerank_hits,
    restore_dense_head,
)
from leadre_model.llm.item_text import MODULE, restore_item_text
from leadre_model.llm.manifest import Manifest
from leadre_model.llm.model import load_members, load_model
from leadre_model.llm.tokenizer import level_token_ids


class SidRetriever:
    """Model + tokenizer + index + trie + level token ids. Build with :meth:`from_dirs`
    (a saved model and its index directory, the saved trie loaded as is) or from objects in
    memory (a model being trained: the trie is built from the index)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 index: SidIndex, trie: SidTrie | None = None,
                 level_ids: Sequence[np.ndarray] | None = None,
                 manifest: Manifest | None = None,
                 cold_nodes: Sequence[np.ndarray] | None = None,
                 members: Sequence[PreTrainedModel] = ()) -> None:
        """``level_ids`` default to the S-ID tokens of the trie's level sizes (the
        index's); ``cold_nodes``: see :func:`~leadre_model.llm.decode.cold_prefix_nodes`;
        ``members``: an ensemble's other models (their dense heads restored), whose dense
        log-probabilities are averaged with ``model``'s wherever the dense head ranks."""
        self.model, self.tokenizer, self.index, self.manifest = model, tokenizer, index, manifest
        self.members = list(members)
        self.trie = trie if trie is not None else index.build_trie()
        self.level_ids = (list(level_ids) if level_ids is not None
                          else level_token_ids(tokenizer, self.trie.level_sizes))
        self.cold_nodes = cold_nodes
        # how a model with a dense head ranks (llm/dense_head.py); None: the head's setting
        self.rerank: Rerank | None = None

    @classmethod
    def from_dirs(cls, model_dir: str | Path, index_dir: str | Path,
                  dtype: Any = None, device: torch.device | None = None) -> SidRetriever:
        """The model saved in ``model_dir`` over the index in ``index_dir``, on ``device``
        (default: the CPU; the decoder keeps the trie there too); BadInputError when the
        model was trained on another index (see :meth:`Manifest.check_index`)."""
        index = load_index(Path(index_dir))
        model, tokenizer, manifest = load_model(model_dir, expected_index_digest=index.digest(),
                                                dtype=dtype, device=device)
        loaded = load_members(model_dir, manifest, dtype=dtype, device=device)
        members = [m for _, m in loaded]
        for path, m in [(Path(model_dir), model), *loaded]:
            restore_item_text(m, path, tokenizer, index, index_dir)
            if restore_dense_head(m, path, tokenizer, index) is None and members:
                raise BadInputError(f"{path}: an ensemble member without a dense head "
                                    "(members are combined through their dense heads)")
        return cls(model, tokenizer, index, load_trie(Path(index_dir)),
                   manifest=Manifest.model_validate(manifest), members=members)

    def extended(self, index: SidIndex,
                 embeddings: np.ndarray | None = None) -> tuple[SidRetriever, int]:
        """This model over ``index``: the trained index plus ads added since (``leadre index
        add``; same ads and S-IDs first, BadInputError otherwise). The trained index's level
        sizes are the model's S-ID vocabulary, so an added ad whose disambiguation code lies
        beyond it cannot be written by this model: it is left out and counted. Added ads are
        reached through their semantic prefix (``cold_nodes``). ``embeddings``: the text
        embeddings of ``index`` (its ``embeddings.npy``), for a model that takes item text
        (llm/item_text.py); without them added ads in prompts get none. Returns (retriever,
        ads left out)."""
        n = len(self.index)
        if index.ad_ids[:n] != self.index.ad_ids or not (index.codes[:n] == self.index.codes).all():
            raise BadInputError("the given index does not extend the one the model was trained on")
        sizes = self.index.level_sizes
        fits = (index.codes < np.asarray(sizes)).all(axis=1)
        trie = SidTrie.build(index.codes[fits], np.flatnonzero(fits), active=index.active[fits],
                             level_sizes=sizes)
        self._cover(index, embeddings)
        cold = np.arange(len(index)) >= n
        nodes = cold_prefix_nodes(trie, index.codes[fits], cold[fits]) if cold.any() else None
        return (SidRetriever(self.model, self.tokenizer, index, trie, self.level_ids,
                             self.manifest, nodes, self.members), int((~fits).sum()))

    def refresh_dense_tables(self) -> None:
        """After ads were added to ``self.index`` in place (the served live index): every
        dense head's ad table covers them; they are scored by their codes, as in
        :meth:`extended` (no id row, no text)."""
        self._cover(self.index)

    def _cover(self, index: SidIndex, embeddings: np.ndarray | None = None) -> None:
        """Every member's item-text table (given the embeddings) and dense-head table over
        ``index``, a superset of the trained one: old rows unchanged, added ads scored by
        their codes (no id row)."""
        for m in (self.model, *self.members):
            adapter = getattr(m, MODULE, None)
            if adapter is not None and embeddings is not None:
                adapter.set_table(self.tokenizer, index, embeddings)
            head = dense_head_of(m)
            if head is not None:
                head.set_table(self.tokenizer, index)

    def retrieve(self, prompts: Prompts, beam_width: int, top_k: int | None = None,
                 exclude: Sequence[Collection[int]] | None = None,
                 cold_nodes: Sequence[np.ndarray] | None = None, batch_size: int = 64,
                 progress: bool = False) -> list[list[Hit]]:
        """Top ``top_k`` (default ``beam_width``) hits per prompt, best first; ``exclude[i]``:
        index rows prompt ``i`` must not return; ``cold_nodes`` default to this retriever's.
        See :func:`~leadre_model.llm.decode.constrained_beam_search`. A model with a dense
        head (llm/dense_head.py) re-ranks the whole beam by it (``self.rerank``, default the
        head's own setting) and returns the top ``top_k`` of that order. An ensemble's
        members decode nothing: their dense log-probabilities join the head's."""
        head = dense_head_of(self.model)
        mode = self.rerank or (head.rerank if head is not None else "off")
        k = beam_width if top_k is None else top_k
        scores = None
        if head is not None and self.members and mode != "off":
            scores = ensemble_log_probs([self.model, *self.members],
                                        encode_prompts(self.tokenizer, prompts), batch_size)
        if head is not None and mode in ("full", "fuse"):  # no beam search: the dense top-k
            return rerank_hits(self.model, head, self.tokenizer, prompts, [[]] * len(prompts),
                               mode, k, self.index, exclude, batch_size, scores=scores,
                               level_ids=self.level_ids)
        hits = constrained_beam_search(
            self.model, self.tokenizer, prompts, self.trie, self.level_ids, beam_width,
            top_k=k if head is None or mode == "off" else beam_width, batch_size=batch_size,
            progress=progress, exclude=exclude,
            cold_nodes=self.cold_nodes if cold_nodes is None else cold_nodes)
        if head is None or mode == "off":
            return hits
        return rerank_hits(self.model, head, self.tokenizer, prompts, hits, mode, k, self.index,
                           batch_size=batch_size, scores=scores)

    def ad_ids(self, hits: Sequence[Sequence[Hit]]) -> list[list[str]]:
        """The ad ids of :meth:`retrieve`'s hits."""
        return [[self.index.ad_ids[h.row] for h in hs] for hs in hits]


class DecoderParts:
    """Read-only access to the parts of the :class:`SidRetriever` an object holds as
    ``sid`` (the evaluation retriever, the inference bundle)."""

    sid: SidRetriever

    @property
    def model(self) -> PreTrainedModel:
        return self.sid.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.sid.tokenizer

    @property
    def trie(self) -> SidTrie:
        return self.sid.trie

    @property
    def level_ids(self) -> list[np.ndarray]:
        return self.sid.level_ids


__all__ = ["DecoderParts", "SidRetriever"]
