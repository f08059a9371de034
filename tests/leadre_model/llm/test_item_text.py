"""Ad text as input soft tokens (llm/item_text.py): where the vectors go, that they survive
save → load through the retriever, and that ads added to the index get theirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leadre_model.index.sid_index import SidIndex, load_embeddings, load_index
from leadre_model.llm.item_text import MODULE, attach_item_text, item_text_dim
from leadre_model.llm.model import LLMConfig, build_model, save_model
from leadre_model.llm.retriever import SidRetriever
from leadre_model.llm.tokenizer import train_tokenizer

CFG = LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)


def _model(index: SidIndex, emb: np.ndarray):  # type: ignore[no-untyped-def]
    tok = train_tokenizer(["a user clicked an ad"], index.level_sizes)
    model, tok = build_model(CFG, tok)
    attach_item_text(model, tok, index, emb)
    return model.eval(), tok


def test_vectors_land_on_the_last_token_of_complete_indexed_sids(small_index: Path) -> None:
    index, emb = load_index(small_index), load_embeddings(small_index)
    model, tok = _model(index, emb)
    adapter = getattr(model, MODULE)
    word = tok("a user", add_special_tokens=False)["input_ids"]
    first, second = tok(index.sid(3), add_special_tokens=False)["input_ids"], \
        tok(index.sid(7), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([word + first + word + second + first[:-1]])  # last S-ID is cut short
    add = adapter(ids)
    assert add is not None and add.shape == (1, ids.shape[1], CFG.hidden_size)
    ends = {len(word) + len(first) - 1: 3, 2 * len(word) + len(first) + len(second) - 1: 7}
    for p in range(ids.shape[1]):
        if p in ends:
            want = adapter.proj(torch.as_tensor(emb[ends[p]]))
            torch.testing.assert_close(add[0, p], want)
        else:
            assert not add[0, p].any(), p
    # and the embedding layer adds exactly that
    plain = model.get_input_embeddings().weight[ids]
    torch.testing.assert_close(model.get_input_embeddings()(ids), plain + add)
    # single decode steps and prompts without S-IDs pass through unchanged
    assert adapter(ids[:, -1:]) is None and adapter(torch.tensor([word])) is None


def test_save_load_through_the_retriever_gives_the_same_logits(small_index: Path,
                                                               tmp_path: Path) -> None:
    index, emb = load_index(small_index), load_embeddings(small_index)
    model, tok = _model(index, emb)
    ids = torch.tensor([tok(index.sid(3) + index.sid(11), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    save_model(model, tok, tmp_path / "m", index.digest())
    sid = SidRetriever.from_dirs(tmp_path / "m", small_index)
    assert item_text_dim(sid.model) == emb.shape[1]
    with torch.no_grad():
        got = sid.model(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    # without the text the logits differ: the map is really in use
    getattr(sid.model, MODULE).windows.levels = 0
    with torch.no_grad():
        assert not torch.allclose(sid.model(input_ids=ids).logits, want)


def _unused_code(index: SidIndex) -> list[int]:
    """An added ad's S-ID on a path of its own that the model can write: an unused last
    semantic code."""
    used = {tuple(c) for c in index.codes.tolist()}
    return next(c for row in range(len(index)) for k in range(index.level_sizes[-2])
                if tuple(c := [*index.codes[row, :-2].tolist(), k, 0]) not in used)


def test_added_ads_get_their_text_in_an_extended_retriever(small_index: Path) -> None:
    index, emb = load_index(small_index), load_embeddings(small_index)
    model, tok = _model(index, emb)
    sid = SidRetriever(model, tok, index)
    bigger = SidIndex(list(index.ad_ids), index.codes.copy(), index.active.copy(), index.config)
    bigger.extend(["new-ad"], np.asarray([_unused_code(index)]), np.array([True]))
    new_vec = np.random.default_rng(0).normal(size=(1, emb.shape[1])).astype(np.float32)
    ext, left_out = sid.extended(bigger, np.concatenate([emb, new_vec]))
    assert left_out == 0
    ids = torch.tensor([tok(bigger.sid(len(index)), add_special_tokens=False)["input_ids"]])
    add = getattr(ext.model, MODULE)(ids)
    assert add is not None
    torch.testing.assert_close(add[0, -1], getattr(ext.model, MODULE).proj(torch.as_tensor(new_vec[0])))


def test_load_report_is_dropped_only_when_it_is_about_the_item_text_map_alone() -> None:
    import logging

    from leadre_model.llm.model import _OnlyItemTextReport

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, msg, None, None)

    ours = "Key | Status\nleadre_item_text.proj.weight | UNEXPECTED |  |\nNotes: ..."
    other = ours.replace("Notes", "model.layers.0.mlp.up_proj.weight | MISSING |  |\nNotes")
    keep = _OnlyItemTextReport()
    assert not keep.filter(rec(ours))
    assert keep.filter(rec(other)) and keep.filter(rec("some other warning"))


def test_text_output_scores_ads_by_their_text_through_the_input_map(small_index: Path,
                                                                     tmp_path: Path) -> None:
    from leadre_model.llm.dense_head import attach_dense_head, dense_head_of, prompt_scores
    from leadre_model.llm.model import DenseHeadSettings

    index, emb = load_index(small_index), load_embeddings(small_index)
    model, tok = _model(index, emb)
    head = attach_dense_head(model, tok, index, DenseHeadSettings(text_output=True, id_input=True))
    adapter = getattr(model, MODULE)
    with torch.no_grad():
        text = adapter.proj(torch.as_tensor(emb))
        plain = head.codes(head.item_codes).sum(1) + head.ids.weight
        torch.testing.assert_close(head.items(), plain + text)
    # the map is the model's, saved once: the head's own state has no copy of it
    assert not any("proj" in k for k in head.state_dict())
    # the dense loss trains the shared map
    ids = torch.tensor([tok(index.sid(3) + index.sid(11), add_special_tokens=False)["input_ids"]])
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert adapter.proj.weight.grad is not None and adapter.proj.weight.grad.abs().sum() > 0
    model.eval()
    # save → load through the retriever: the same scores, the map shared again
    want = prompt_scores(model, head, ids.tolist())
    save_model(model, tok, tmp_path / "m", index.digest())
    sid = SidRetriever.from_dirs(tmp_path / "m", small_index)
    again = dense_head_of(sid.model)
    assert again is not None and again._text is getattr(sid.model, MODULE)
    torch.testing.assert_close(prompt_scores(sid.model, again, ids.tolist()), want)
    # an ad added with its text is scored by it (no id row: codes + text)
    bigger = SidIndex(list(index.ad_ids), index.codes.copy(), index.active.copy(), index.config)
    bigger.extend(["new-ad"], np.asarray([_unused_code(index)]), np.array([True]))
    new_vec = np.random.default_rng(0).normal(size=(1, emb.shape[1])).astype(np.float32)
    ext, _ = sid.extended(bigger, np.concatenate([emb, new_vec]))
    head = dense_head_of(ext.model)
    with torch.no_grad():
        items = head.items()
        want_new = (head.codes(head.item_codes[-1]).sum(0)
                    + getattr(ext.model, MODULE).proj(torch.as_tensor(new_vec[0])))
    torch.testing.assert_close(items[-1], want_new * head.fits[-1])
    # the head needs the map it shares
    with pytest.raises(ValueError, match="item_text"):
        LLMConfig(dense_head=DenseHeadSettings(text_output=True))
