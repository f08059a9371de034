"""The dense head (llm/dense_head.py): where its targets are, that TRL training through the
CPU recipe trains it, that it survives save → load, and that retrieval re-ranks by it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from leadre_model.data.split import train_item_sequences
from leadre_model.index.collab import cooccurrence
from leadre_model.index.sid_index import load_index
from leadre_model.llm.decode import exhaustive_scores
from leadre_model.llm.dense_head import MODULE, attach_dense_head, dense_head_of, prompt_scores
from leadre_model.llm.model import DenseHeadSettings, LLMConfig, build_model
from leadre_model.llm.retriever import SidRetriever
from leadre_model.llm.tokenizer import train_tokenizer
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, collab_id_vectors, train_leadre
from leadre_model.train.validate import ValidationConfig

CFG = LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)


def _model(index, **kw):  # type: ignore[no-untyped-def]
    tok = train_tokenizer(["a user clicked an ad"], index.level_sizes)
    model, tok = build_model(CFG, tok)
    attach_dense_head(model, tok, index, DenseHeadSettings(**kw))
    return model, tok


def test_targets_are_scored_at_the_position_before_their_first_labelled_sid(
        small_index: Path) -> None:
    index = load_index(small_index)
    model, tok = _model(index)
    head = dense_head_of(model)
    word = tok("a user", add_special_tokens=False)["input_ids"]
    first = tok(index.sid(3), add_special_tokens=False)["input_ids"]
    second = tok(index.sid(7), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([word + first + word + second])
    labels = ids.clone()
    labels[0, : len(word) + len(first)] = -100  # the first ad is history, the second a target
    hidden = torch.randn(1, ids.shape[1], CFG.hidden_size)
    ce, (b, p) = head.target_losses(ids, labels, hidden)
    assert p.tolist() == [2 * len(word) + len(first) - 1] and b.tolist() == [0]
    want = torch.nn.functional.cross_entropy(head.scores(hidden[0, p]), torch.tensor([7]))
    torch.testing.assert_close(ce.mean(), want)
    # the model's own loss (no TRL) gets it added while training, not in eval mode
    model.train()
    with torch.no_grad():
        with_head = model(input_ids=ids, labels=labels).loss
        model.eval()
        plain = model(input_ids=ids, labels=labels).loss
    tokens = (labels[:, 1:] != -100).sum()
    torch.testing.assert_close(with_head, plain + head.last_loss / tokens, rtol=1e-4, atol=1e-4)


def test_model_loss_trainer_matches_trls_fused_loss_with_the_head(small_index: Path,
                                                                  tmp_path: Path) -> None:
    # train/sft_trainer.py swaps TRL's fused LM head for the model's own loss (faster on a
    # CPU): the same number, the dense term included, over an accumulated batch's tokens.
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from leadre_model.train.sft_trainer import ModelLossSFTTrainer

    index = load_index(small_index)
    model, tok = _model(index)
    word = tok("a user", add_special_tokens=False)["input_ids"]
    rows = []
    for a, b in ((3, 7), (5, 2)):
        first = tok(index.sid(a), add_special_tokens=False)["input_ids"]
        second = tok(index.sid(b), add_special_tokens=False)["input_ids"]
        ids = word + first + word + second
        rows.append({"input_ids": ids, "labels": [-100] * (len(ids) - len(second)) + second})
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                     max_length=64, completion_only_loss=True)
    losses = []
    for cls in (SFTTrainer, ModelLossSFTTrainer):
        trainer = cls(model=model, args=args, processing_class=tok,
                      train_dataset=Dataset.from_list(rows))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        model.train()
        with torch.no_grad():
            # as if the batch were one of 3 accumulated ones with 3× its label tokens
            n = (batch["labels"][:, 1:] != -100).sum() * 3
            losses.append(trainer.compute_loss(model, dict(batch), num_items_in_batch=n))
    assert dense_head_of(model).last_loss > 0
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    # our trainer leaves the model's own forward, so a deep copy (a fork's branch) runs its
    # own weights, not the original's through TRL's patched closure
    assert "forward" not in vars(model)
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        twin.get_output_embeddings().weight.mul_(2.0)
        ids = batch["input_ids"][:1]
        assert not torch.allclose(twin(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_id_input_adds_each_ads_own_vector_at_the_end_of_its_sid(small_index: Path) -> None:
    index = load_index(small_index)
    model, tok = _model(index, id_input=True)
    head = dense_head_of(model)
    with torch.no_grad():
        head.ids.weight.normal_()
    word = tok("a user", add_special_tokens=False)["input_ids"]
    first = tok(index.sid(3), add_special_tokens=False)["input_ids"]
    second = tok(index.sid(7), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([word + first + word + second])
    add = head.input_vectors(ids)[0]
    ends = {len(word) + len(first) - 1: 3, len(ids[0]) - 1: 7}
    for pos in range(ids.shape[1]):
        want = head.ids.weight[ends[pos]] if pos in ends else torch.zeros(CFG.hidden_size)
        torch.testing.assert_close(add[pos], want)
    # it reaches the model's input embeddings; plain token embeddings elsewhere
    model.eval()
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)[0]
        plain = model.get_input_embeddings().weight[ids[0]]
    torch.testing.assert_close(emb, plain + add)
    # a decode step (one token) and a cut-short S-ID get nothing; an ad without a row
    # (added after training) gets nothing either: new ads go through their codes
    assert head.input_vectors(ids[:, -1:]) is None
    assert head.input_vectors(torch.tensor([word + first[:-1]])) is None
    head.ids = torch.nn.Embedding(3, CFG.hidden_size)
    assert head.input_vectors(torch.tensor([word + first])).abs().sum() == 0
    # without the id table there is nothing to tie
    with pytest.raises(ValueError, match="id_table"):
        DenseHeadSettings(id_input=True, id_table=False)


def test_collab_init_starts_co_occurring_ads_close(tiny_world_index) -> None:  # type: ignore[no-untyped-def]
    world, index_dir = tiny_world_index
    index = load_index(index_dir)
    vectors = collab_id_vectors(world, index, index_dir, CFG.hidden_size, seed=0)
    assert vectors.shape == (len(index), CFG.hidden_size)
    model, _ = _model(index, id_init="collab")
    head = dense_head_of(model)
    before = head.ids.weight.detach().clone()
    vectors[5] = 0.0  # an ad without a vector keeps its random start
    set_rows = head.init_ids(vectors)
    rows = head.ids.weight.detach()
    assert set_rows == int((np.linalg.norm(vectors, axis=1) > 0).sum()) > len(index) // 2
    torch.testing.assert_close(rows[5], before[5])
    # the random start's norm (0.02 per entry), the vectors' directions
    on = torch.as_tensor(np.linalg.norm(vectors, axis=1) > 0)
    norms = rows[on].norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.02 * CFG.hidden_size ** 0.5))
    cos = torch.nn.functional.cosine_similarity(rows[on], torch.as_tensor(vectors)[on])
    torch.testing.assert_close(cos, torch.ones_like(cos))
    # ads that co-occur most in the training sequences start closer than ads that never do
    row_of = {a: i for i, a in enumerate(index.ad_ids)}
    co = cooccurrence(train_item_sequences(world, row_of), len(index), 3).toarray()
    a, b = np.unravel_index(np.argmax(co), co.shape)
    unit = torch.nn.functional.normalize(rows, dim=1)
    never = [(i, j) for i in range(len(index)) for j in range(i)
             if co[i, j] == 0 and on[i] and on[j]]
    assert float(unit[a] @ unit[b]) > np.mean([float(unit[i] @ unit[j]) for i, j in never])
    with pytest.raises(ValueError, match="shape"):
        head.init_ids(vectors[:, :3])
    # a width beyond the SVD's rank cap: the rank-256 vectors, zero-padded
    wide = collab_id_vectors(world, index, index_dir, 300, seed=0)
    assert wide.shape == (len(index), 300) and not wide[:, 256:].any() and wide.any()
    with pytest.raises(ValueError, match="id_table"):
        DenseHeadSettings(id_init="collab", id_table=False)


@pytest.fixture(scope="module")
def trained(tiny_world_index, tmp_path_factory):  # type: ignore[no-untyped-def]
    world, index_dir = tiny_world_index
    root = tmp_path_factory.mktemp("dense")
    base = TRAIN_PRESETS["cpu"]
    cfg = base.model_copy(update={
        "llm": base.llm.model_copy(update={"dense_head": DenseHeadSettings(
            rerank="dense", id_input=True, id_init="collab")}),
        "seq": base.seq.model_copy(update={"epochs": 3, "logging_steps": 1}),
        "validation": ValidationConfig(users=20, every_epochs=1.5)})
    summary = train_leadre(world, index_dir, root / "model", cfg, progress=False)
    return world, index_dir, root / "model", cfg, summary


def test_trl_training_trains_the_head_and_it_survives_save_and_load(trained) -> None:  # type: ignore[no-untyped-def]
    world, index_dir, model_dir, cfg, summary = trained
    index = load_index(index_dir)
    sid = SidRetriever.from_dirs(model_dir, index_dir)
    head = dense_head_of(sid.model)
    assert head is not None and head.rerank == "dense" and head.id_input
    assert summary["timings"]["collab_init_s"] > 0  # the id table started from item-CF
    # trained: the query map moved away from its identity init
    assert not torch.allclose(head.query.weight, torch.eye(head.query.in_features))
    # validation rounds score the model with every use of its head and select by its own
    for r in summary["validation"]["rounds"]:
        assert r["valid_recall@10"] == r["valid_recall@10_dense"]
        assert {f"valid_recall@10_{m}" for m in ("off", "mix", "full")} <= set(r)
    samples = build_samples(world, index, cfg.prompts, ["main"], "test")[:6]
    ids = sid.tokenizer([s["prompt"] for s in samples])["input_ids"]
    # batched (left-padded) and one by one agree, and a reload gives the same scores
    batched = prompt_scores(sid.model, head, ids)
    alone = torch.cat([prompt_scores(sid.model, head, [p]) for p in ids])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
    again = SidRetriever.from_dirs(model_dir, index_dir)
    torch.testing.assert_close(prompt_scores(again.model, dense_head_of(again.model), ids),
                               batched)


def test_retrieval_reranks_the_beam_by_the_head(trained) -> None:  # type: ignore[no-untyped-def]
    world, index_dir, model_dir, cfg, _ = trained
    index = load_index(index_dir)
    sid = SidRetriever.from_dirs(model_dir, index_dir)
    prompts = [s["prompt"] for s in build_samples(world, index, cfg.prompts, ["main"], "test")[:4]]
    ids = sid.tokenizer(prompts)["input_ids"]
    scores = prompt_scores(sid.model, dense_head_of(sid.model), ids)
    sid.rerank = "off"
    beam = sid.retrieve(prompts, 10)
    sid.rerank = "dense"
    dense = sid.retrieve(prompts, 10, top_k=5)
    for i, (b, d) in enumerate(zip(beam, dense)):
        rows = [h.row for h in b]
        want = sorted(rows, key=lambda r: -float(scores[i, r]))[:5]
        assert [h.row for h in d] == want
    sid.rerank = "mix"
    mix = sid.retrieve(prompts, 10, top_k=5)
    assert all(len(m) == 5 and {h.row for h in m} <= {h.row for h in b}
               for m, b in zip(mix, beam))
    sid.rerank = "full"
    full = sid.retrieve(prompts, 10, top_k=5, exclude=[{int(scores[0].argmax())}, (), (), ()])
    assert [h.row for h in full[1]] == scores[1].masked_fill(
        ~torch.as_tensor(index.active), float("-inf")).topk(5).indices.tolist()
    assert int(scores[0].argmax()) not in {h.row for h in full[0]}
    assert getattr(sid.model, MODULE) is dense_head_of(sid.model)
    # fuse: the dense top 8 by dense log-softmax + 0.5 x their exhaustive S-ID log-prob
    head = dense_head_of(sid.model)
    head.fuse_candidates, head.fuse_weight = 8, 0.5
    sid.rerank = "fuse"
    fused = sid.retrieve(prompts, 10, top_k=5, exclude=[{int(scores[0].argmax())}, (), (), ()])
    logp = torch.log_softmax(scores, 1).masked_fill(~torch.as_tensor(index.active), float("-inf"))
    logp[0, int(scores[0].argmax())] = float("-inf")
    for i, prompt in enumerate(prompts):
        sid_lp = {h.row: h.logprob for h in exhaustive_scores(sid.model, sid.tokenizer, prompt,
                                                              sid.trie, sid.level_ids)}
        cands = logp[i].topk(8).indices.tolist()
        want = sorted(cands, key=lambda r: -(float(logp[i, r]) + 0.5 * sid_lp[r]))[:5]
        assert [h.row for h in fused[i]] == want
        assert fused[i][0].logprob == pytest.approx(float(logp[i, want[0]]) + 0.5 * sid_lp[want[0]],
                                                    abs=1e-3)


def test_validation_by_the_head_alone_scores_as_it_retrieves_and_reports(trained) -> None:  # type: ignore[no-untyped-def]
    from leadre_model.train.validate import BestOnValidation, SidValidator

    world, index_dir, model_dir, cfg, _ = trained
    index = load_index(index_dir)
    sid = SidRetriever.from_dirs(model_dir, index_dir)
    dense_head_of(sid.model).rerank = "full"
    samples = build_samples(world, index, cfg.prompts, ["main"], "valid")[:30]
    vcfg = ValidationConfig(users=30, every_use=False)
    validator = SidValidator(index, samples, vcfg)
    lines: list[str] = []
    selector = BestOnValidation(validator, vcfg, sid.tokenizer, report=lines.append)
    selector._round(sid.model, 1.0)
    assert validator.extra == {}  # no other use of the head was scored (no beam search)
    hits = sid.retrieve([s["prompt"] for s in samples], 20, top_k=10)
    want = sum(s["target_ad"] in set(a) for s, a in zip(samples, sid.ad_ids(hits))) / 30
    assert selector.history[0]["valid_recall@10"] == want
    assert len(lines) == 1 and f"Recall@10 {want:.4f} on 30 users" in lines[0]
