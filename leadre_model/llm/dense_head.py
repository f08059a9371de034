"""A dense retrieval head beside the S-ID head (LIGER, arXiv 2411.18814: generative
retrieval lags dense retrieval under equal conditions, a hybrid closes the gap).

With ``LLMConfig(dense_head=DenseHeadSettings(...))`` the model also learns, at the position
just before every training target's first S-ID token (the ``<|ad|>`` marker, which is also
the last token of a prompt), a query vector scored against a vector of **every** ad with a
full-softmax cross-entropy, as SASRec-CE is trained. An ad's vector is the sum of one
trained vector per S-ID code (level by level) plus, with ``id_table``, a trained vector of
its own: an ad added after training has no row in that table (zero) and is still scored
through its codes, so new ads stay reachable. With ``id_input`` the same id vector is also
added to the input embedding of the last S-ID token of every indexed ad in the token stream
(input and output tables tied, as SASRec ties them): S-ID codes are shared by many ads, the
id vector is what lets the model memorise an ad's own co-occurrences. Prompts are encoded
in one call, so their ads are complete; single decode steps never are (outputs get none),
and a new ad adds nothing (no row), so cold start still goes through the codes. With
``text_output`` an ad's vector also gets its frozen text embedding through the model's
item-text map (llm/item_text.py, the map of the input side: tied as the ids are), so ads
that share codes differ by their text, and an ad added after training has text too.

Training: two forward hooks, so the model stays a plain Hugging Face causal LM for TRL and
the decoder — one on the backbone keeps the last hidden states, one on the model adds the
dense loss (weight ``weight``) as one more target token: into TRL's per-token log-probs
(its fused LM head) or into the model's own ``loss``. Retrieval (llm/retriever.py): the beam
of the trie-constrained search is re-ranked by the dense score (``dense``), by the dense
log-softmax plus the beam's S-ID log-probability (``mix``, a product of the two experts), or
replaced by the dense top-k over all active ads (``full``); ``off`` keeps the beam's order.
``fuse`` needs no beam: the dense head's top ``fuse_candidates`` over all active ads are
scored by the S-ID head too, teacher-forced (``decode.candidate_scores``), and ranked by the dense
log-softmax plus ``fuse_weight`` times their S-ID log-probability (the product of experts of
``mix``, on candidates the beam could have missed).
Saved with the weights under ``leadre_dense_head.*`` (the code → ad tables are rebuilt from
the index the model is loaded with); the config's ``leadre_dense_head`` says how to rebuild.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.errors import BadInputError
from leadre_model.index.sid_index import SidIndex
from leadre_model.llm.decode import Hit, Prompts, candidate_scores, encode_prompts
from leadre_model.llm.item_text import ItemTextInput
from leadre_model.llm.model import DENSE_HEAD_MODULE, ITEM_TEXT_MODULE, DenseHeadSettings
from leadre_model.llm.sid_windows import SidWindows

MODULE = DENSE_HEAD_MODULE
CONFIG_KEY = "leadre_dense_head"  # in config.json: {"level_sizes", "ids", "rerank", "weight",
#                                    "id_input", "fuse_candidates", "fuse_weight", "text_output"}
Rerank = Literal["off", "dense", "mix", "full", "fuse"]
INIT_STD = 0.02  # per entry of the code and ad-id tables' random start


class DenseHead(torch.nn.Module):
    """Query map, code and ad-id tables (saved) and the index's code table (not saved)."""

    def __init__(self, hidden: int, level_sizes: Sequence[int], ids: int,
                 rerank: Rerank = "mix", weight: float = 1.0, id_input: bool = False,
                 fuse_candidates: int = 50, fuse_weight: float = 0.1) -> None:
        super().__init__()
        self.level_sizes, self.rerank, self.weight = list(level_sizes), rerank, weight
        self.fuse_candidates, self.fuse_weight = fuse_candidates, fuse_weight
        self.id_input = id_input and ids > 0
        self.query = torch.nn.Linear(hidden, hidden, bias=False)
        self.codes = torch.nn.Embedding(sum(level_sizes), hidden)
        self.ids = torch.nn.Embedding(ids, hidden) if ids else None
        self.windows = SidWindows()
        for name in ("item_codes", "fits"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        self._hidden: torch.Tensor | None = None
        self.last_loss = float("nan")  # mean dense CE of the last training batch
        self._text: ItemTextInput | None = None  # with text_output (the model's, not a submodule)

    def use_text(self, adapter: ItemTextInput) -> None:
        """Score ads with their text too, through ``adapter`` (llm/item_text.py's
        ``ItemTextInput``: ``proj`` and the ``text`` table of the current index). Kept as a
        plain attribute: the map is the model's and is saved once, there."""
        object.__setattr__(self, "_text", adapter)

    def reset(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(self.query.in_features))
            for table in (self.codes, self.ids):
                if table is not None:
                    table.weight.copy_(torch.randn(table.weight.shape, generator=gen) * INIT_STD)

    def init_ids(self, vectors: np.ndarray) -> int:
        """Start the ad-id rows from ``vectors`` (ads × hidden, e.g. item-CF embeddings):
        each nonzero row rescaled to the norm the random start gives a row (``INIT_STD``
        per entry), so only the rows' directions change; zero rows keep their random start.
        Returns how many rows were set."""
        if self.ids is None:
            raise ValueError("init_ids: the dense head has no ad-id table")
        n, hidden = self.ids.weight.shape
        if vectors.ndim != 2 or vectors.shape[1] != hidden or len(vectors) < n:
            raise ValueError(f"init_ids: vectors of shape {vectors.shape}, the table is "
                             f"({n}, {hidden})")
        vec = torch.as_tensor(vectors[:n], dtype=torch.float32)
        norm = vec.norm(dim=1, keepdim=True)
        keep = norm.squeeze(1) > 0
        with torch.no_grad():
            rows = vec[keep] / norm[keep] * (INIT_STD * hidden ** 0.5)
            self.ids.weight[keep.to(self.ids.weight.device)] = rows.to(self.ids.weight)
        return int(keep.sum())

    def set_table(self, tokenizer: PreTrainedTokenizerBase, index: SidIndex) -> None:
        """(Re)build the ad → codes table and the S-ID lookup for ``index``."""
        if index.codes.shape[1] != len(self.level_sizes):
            raise BadInputError(f"dense head: {len(self.level_sizes)} levels, the index has "
                                f"{index.codes.shape[1]}")
        device = self.query.weight.device
        self.windows.set_table(tokenizer, index, device)
        sizes = np.asarray(self.level_sizes)
        fits = (index.codes < sizes).all(axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        codes = np.where(fits[:, None], index.codes, 0) + offsets
        self.item_codes = torch.as_tensor(codes, dtype=torch.long, device=device)
        self.fits = torch.as_tensor(fits, device=device)

    def items(self) -> torch.Tensor:
        """(ads, hidden): every ad's vector (zero for ads beyond the model's vocabulary)."""
        vec = self.codes(self.item_codes).sum(1)
        if self.ids is not None:  # ads added after training have no row
            vec = _add_leading(vec, self.ids.weight)
        if self._text is not None:  # nor ads added without their text
            vec = _add_leading(vec, self._text.proj(self._text.text))
        return vec * self.fits.unsqueeze(1).to(vec.dtype)

    def input_vectors(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """(B, T, hidden) id vectors to add to the input embeddings of ``input_ids`` (at
        the last token of each complete S-ID of an ad with a row), None when there is none."""
        if not self.id_input or self.ids is None:
            return None
        hit = self.windows.find(input_ids)
        if hit is None:
            return None
        found, rows = hit
        n = self.ids.num_embeddings
        return self.windows.at_last_tokens(self.ids(rows.clamp(max=n - 1)), found & (rows < n))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, ads) dense scores of last hidden states (B, hidden)."""
        return self.query(hidden) @ self.items().T

    def target_losses(self, input_ids: torch.Tensor, labels: torch.Tensor,
                      hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cross-entropy of every labelled complete S-ID in ``input_ids`` over all ads,
        scored at the position before its first token; (losses, query positions (b, p))."""
        hit = self.windows.find(input_ids)
        if hit is None:
            return None
        found, rows = hit
        found = found & (labels[:, : found.shape[1]] != -100)
        found[:, 0] = False  # a target needs a position before it
        b, j = found.nonzero(as_tuple=True)
        if len(b) == 0:
            return None
        logits = self.scores(hidden[b, j - 1])
        ce = torch.nn.functional.cross_entropy(logits.float(), rows[b, j], reduction="none")
        return ce, torch.stack([b, j - 1])


def _add_leading(vec: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``vec`` (ads, hidden) with ``rows`` added to its first ``len(rows)`` ads."""
    n = min(len(rows), len(vec))
    return torch.cat([vec[:n] + rows[:n].to(vec.dtype), vec[n:]])


def _keep_hidden(module: torch.nn.Module, _args: Any, out: Any) -> None:
    head = module.leadre_dense_head_owner  # type: ignore[attr-defined]
    head._hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state


def _add_loss(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              out: Any) -> Any:
    head: DenseHead = getattr(module, MODULE)
    hidden, head._hidden = head._hidden, None
    labels, input_ids = kwargs.get("labels"), kwargs.get("input_ids", args[0] if args else None)
    if not module.training or labels is None or input_ids is None or hidden is None:
        return out
    res = head.target_losses(input_ids, labels, hidden)
    if res is None:
        return out
    ce, (b, p) = res
    head.last_loss = float(ce.detach().mean())
    log_probs = getattr(out, "log_probs", None)
    if log_probs is not None:  # TRL's fused head: loss = -sum(log_probs) / label tokens
        out.log_probs = log_probs.index_put((b, p), -head.weight * ce.to(log_probs.dtype),
                                            accumulate=True)
    elif getattr(out, "loss", None) is not None:
        # the model's loss divides by the trainer's label count over the whole accumulated
        # batch when it passes one (num_items_in_batch), else by this micro-batch's
        tokens = kwargs.get("num_items_in_batch")
        if tokens is None:
            tokens = (labels[:, 1:] != -100).sum().clamp(min=1)
        out.loss = out.loss + head.weight * ce.sum() / tokens
    return out


def _add_ids(module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    head = module.leadre_dense_head_owner  # type: ignore[attr-defined]
    add = head.input_vectors(args[0]) if args else None
    return out if add is None else out + add.to(out.dtype)


def _install(model: PreTrainedModel, head: DenseHead) -> None:
    model.add_module(MODULE, head)
    object.__setattr__(model.base_model, "leadre_dense_head_owner", head)
    model.base_model.register_forward_hook(_keep_hidden)
    model.register_forward_hook(_add_loss, with_kwargs=True)
    if head.id_input:
        emb = model.get_input_embeddings()
        object.__setattr__(emb, "leadre_dense_head_owner", head)
        # prepended: the embedding dropout hook (llm/model.py) then drops the sum, ids included
        emb.register_forward_hook(_add_ids, prepend=True)


def attach_dense_head(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      index: SidIndex, cfg: DenseHeadSettings, seed: int = 0) -> DenseHead:
    """Give ``model`` a fresh dense head (seeded) for ``index``; its settings go into the
    model's config so :func:`restore_dense_head` puts it back after loading."""
    hidden = model.get_input_embeddings().weight.shape[1]
    ids = len(index) if cfg.id_table else 0
    head = DenseHead(hidden, index.level_sizes, ids, cfg.rerank, cfg.weight, cfg.id_input,
                     cfg.fuse_candidates, cfg.fuse_weight)
    head.reset(seed)
    head.to(model.get_input_embeddings().weight.device)
    head.set_table(tokenizer, index)
    if cfg.text_output:
        _share_text(model, head)
    _install(model, head)
    model.config.update({CONFIG_KEY: {"level_sizes": list(index.level_sizes), "ids": ids,
                                      "rerank": cfg.rerank, "weight": cfg.weight,
                                      "id_input": head.id_input,
                                      "fuse_candidates": cfg.fuse_candidates,
                                      "fuse_weight": cfg.fuse_weight,
                                      "text_output": cfg.text_output}})
    return head


def _share_text(model: PreTrainedModel, head: DenseHead) -> None:
    adapter = getattr(model, ITEM_TEXT_MODULE, None)
    if adapter is None:
        raise BadInputError("dense head text_output: the model has no item-text map "
                            "(attach or restore item text first)")
    head.use_text(adapter)


def dense_head_of(model: PreTrainedModel) -> DenseHead | None:
    return getattr(model, MODULE, None)


def restore_dense_head(model: PreTrainedModel, model_dir: str | Path,
                       tokenizer: PreTrainedTokenizerBase, index: SidIndex) -> DenseHead | None:
    """Put the saved head of a model trained with one back (weights from the model's
    safetensors), its tables built for ``index``; None for a model without one."""
    spec = getattr(model.config, CONFIG_KEY, None)
    if not spec:
        return None
    hidden = model.get_input_embeddings().weight.shape[1]
    head = DenseHead(hidden, spec["level_sizes"], spec["ids"], spec["rerank"], spec["weight"],
                     bool(spec.get("id_input", False)), int(spec.get("fuse_candidates", 50)),
                     float(spec.get("fuse_weight", 0.1)))
    state: dict[str, torch.Tensor] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            state |= {k[len(MODULE) + 1:]: f.get_tensor(k) for k in f.keys()  # noqa: SIM118
                      if k.startswith(MODULE + ".")}
    missing = set(head.state_dict()) - set(state)
    if missing:
        raise BadInputError(f"{model_dir}: config says the model has a dense head, but "
                            f"{sorted(missing)} are not saved")
    head.load_state_dict(state)
    head.to(model.get_input_embeddings().weight.device)
    head.set_table(tokenizer, index)
    if spec.get("text_output"):
        _share_text(model, head)
    _install(model, head)
    return head


@torch.inference_mode()
def prompt_scores(model: PreTrainedModel, head: DenseHead, ids: Sequence[Sequence[int]],
                  batch_size: int = 64) -> torch.Tensor:
    """(prompts, ads) dense scores at each prompt's last token (left-padded batches, rotary
    positions counted over real tokens, as the decoder does)."""
    out = []
    pad = 0
    for lo in range(0, len(ids), batch_size):
        chunk = [torch.as_tensor(list(p), dtype=torch.long) for p in ids[lo:lo + batch_size]]
        rev = torch.nn.utils.rnn.pad_sequence([c.flip(0) for c in chunk], batch_first=True,
                                              padding_value=pad)
        input_ids = rev.flip(1).to(model.device)
        lens = torch.as_tensor([len(c) for c in chunk], device=model.device)
        mask = (torch.arange(input_ids.shape[1], device=model.device)
                >= input_ids.shape[1] - lens[:, None]).long()
        hidden = model.base_model(input_ids=input_ids, attention_mask=mask,
                                  position_ids=(mask.cumsum(1) - 1).clamp(min=0)).last_hidden_state
        out.append(head.scores(hidden[:, -1]).float())
    return torch.cat(out) if out else torch.zeros(0, len(head.item_codes))


def ensemble_log_probs(models: Sequence[PreTrainedModel], ids: Sequence[Sequence[int]],
                       batch_size: int = 64) -> torch.Tensor:
    """(prompts, ads) mean over ``models`` (an ensemble, each with its dense head) of their
    dense log-probabilities: averaging log-probabilities (a product of the members'
    distributions) keeps an ad high only where every member puts it high."""
    total = None
    for m in models:
        head = dense_head_of(m)
        if head is None:
            raise BadInputError("every ensemble member needs a dense head")
        logp = torch.log_softmax(prompt_scores(m, head, ids, batch_size), dim=1)
        total = logp if total is None else total + logp
    if total is None:
        raise ValueError("an ensemble needs at least one model")
    return total / len(models)


def rerank_hits(model: PreTrainedModel, head: DenseHead, tokenizer: PreTrainedTokenizerBase,
                prompts: Prompts, hits: Sequence[Sequence[Hit]], mode: Rerank, k: int,
                index: SidIndex, exclude: Sequence[Collection[int]] | None = None,
                batch_size: int = 64, scores: torch.Tensor | None = None,
                level_ids: Sequence[np.ndarray] | None = None) -> list[list[Hit]]:
    """Per prompt, the top ``k`` by ``mode`` (module doc): ``hits`` are the beam's
    candidates; ``full`` and ``fuse`` rank every active ad of ``index`` the head can score
    instead (minus ``exclude``; ``fuse`` needs ``level_ids``, the S-ID token ids per level).
    A hit's ``logprob`` becomes the score it was ranked by. ``scores``:
    :func:`prompt_scores` of ``prompts`` when already computed."""
    ids = encode_prompts(tokenizer, prompts) if scores is None or mode == "fuse" else []
    if scores is None:
        scores = prompt_scores(model, head, ids, batch_size)
    logp = torch.log_softmax(scores, dim=1).cpu()
    if mode in ("full", "fuse"):
        allowed = torch.as_tensor(index.active) & head.fits.cpu()
        logp = logp.masked_fill(~allowed, float("-inf"))
        for i, ex in enumerate(exclude or []):
            if ex:
                logp[i, torch.as_tensor(sorted(ex), dtype=torch.long)] = float("-inf")
        if mode == "full":
            return _top_hits(logp, k, index)
        if level_ids is None:
            raise ValueError("rerank 'fuse' needs the S-ID token ids per level (level_ids)")
        return _fused_hits(model, head, ids, logp, k, index, level_ids, tokenizer.pad_token_id,
                           batch_size)
    out = []
    for i, cands in enumerate(hits):
        if not cands:
            out.append([])
            continue
        s = logp[i, torch.as_tensor([h.row for h in cands], dtype=torch.long)].double()
        sid = torch.as_tensor([h.logprob for h in cands], dtype=torch.float64)
        s = {"dense": s, "mix": s + sid, "off": sid}[mode]
        order = torch.argsort(s, descending=True, stable=True)[:k]
        out.append([Hit(cands[j].row, cands[j].codes, float(s[j])) for j in order.tolist()])
    return out


def _top_hits(scores: torch.Tensor, k: int, index: SidIndex) -> list[list[Hit]]:
    """Per row of ``scores`` (prompts, ads; -inf: not allowed), its top ``k`` as hits."""
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return [[Hit(int(r), tuple(int(c) for c in index.codes[int(r)]), float(v))
             for r, v in zip(rows, vals) if np.isfinite(float(v))]
            for rows, vals in zip(top.indices, top.values)]


def _fused_hits(model: PreTrainedModel, head: DenseHead, ids: Sequence[Sequence[int]],
                logp: torch.Tensor, k: int, index: SidIndex, level_ids: Sequence[np.ndarray],
                pad_id: int, batch_size: int) -> list[list[Hit]]:
    """The dense top ``fuse_candidates`` re-ranked by dense + ``fuse_weight`` · S-ID."""
    m = min(max(k, head.fuse_candidates), logp.shape[1])
    top = logp.topk(m, dim=1)
    rows = top.indices.numpy()
    # a -inf row (inactive, excluded, beyond the vocabulary) may have codes the model has
    # no token for: clamp them to score something; the -inf keeps it out anyway
    codes = np.minimum(index.codes[rows], np.asarray(head.level_sizes) - 1)
    sid = candidate_scores(model, ids, codes, level_ids, pad_id, batch_size)
    fused = top.values.double() + head.fuse_weight * torch.as_tensor(sid)
    fused = fused.masked_fill(~torch.isfinite(top.values), float("-inf"))
    order = torch.argsort(fused, dim=1, descending=True, stable=True)[:, :k]
    return [[Hit(int(rows[i, j]), tuple(int(c) for c in index.codes[rows[i, j]]),
                 float(fused[i, j])) for j in order[i].tolist() if np.isfinite(float(fused[i, j]))]
            for i in range(len(rows))]


__all__ = ["DenseHead", "attach_dense_head", "dense_head_of", "ensemble_log_probs",
           "prompt_scores", "rerank_hits", "restore_dense_head"]
