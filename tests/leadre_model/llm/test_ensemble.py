"""An ensemble of dense-head models (TrainConfig.members): members differ only by their
seeds and share the time budget, are saved in one model directory, load back through the
retriever (and everything built on it), and retrieval ranks by their mean dense
log-probability."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leadre_model.errors import BadInputError
from leadre_model.index.sid_index import load_index
from leadre_model.llm.dense_head import dense_head_of, ensemble_log_probs, prompt_scores
from leadre_model.llm.ensemble import join_models, take_member
from leadre_model.llm.manifest import Manifest
from leadre_model.llm.model import DenseHeadSettings
from leadre_model.llm.retriever import SidRetriever
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig, member_config, train_leadre
from leadre_model.train.validate import ValidationConfig


def _config(members: int) -> TrainConfig:
    base = TRAIN_PRESETS["cpu"]
    return base.model_copy(update={
        "llm": base.llm.model_copy(update={"item_text": True, "dense_head": DenseHeadSettings(
            rerank="full", id_input=True, text_output=True)}),
        "seq": base.seq.model_copy(update={"epochs": 2, "logging_steps": 1}),
        # every user validates (the world has 40), so a member trained alone, whose shifted
        # seed would draw another sample of validation users, selects on the same ones
        "validation": ValidationConfig(users=40, every_epochs=1.0, time_budget_s=600.0),
        "members": members})


@pytest.fixture(scope="module")
def ensemble(tiny_world_index, tmp_path_factory):  # type: ignore[no-untyped-def]
    world, index_dir = tiny_world_index
    out = tmp_path_factory.mktemp("ensemble") / "model"
    summary = train_leadre(world, index_dir, out, _config(2), progress=False)
    return world, index_dir, out, summary


def test_members_shift_every_seed_and_split_the_budget() -> None:
    cfg = _config(2)
    one = member_config(cfg, 1)
    assert (one.llm.seed, one.sft.seed, one.seq.seed) == (cfg.llm.seed + 1, cfg.sft.seed + 1,
                                                          cfg.seq.seed + 1)
    assert member_config(cfg, 0).validation.time_budget_s == one.validation.time_budget_s == 300
    assert member_config(_config(1), 0) == _config(1)  # a single model: the config as given
    with pytest.raises(ValueError, match="dense_head"):
        TrainConfig.model_validate({**_config(1).model_dump(), "members": 2,
                                    "llm": {**_config(1).llm.model_dump(), "dense_head": None}})
    with pytest.raises(ValueError, match="DPO"):
        TrainConfig.model_validate({**TRAIN_PRESETS["demo"].model_dump(), "members": 2,
                                    "llm": _config(1).llm.model_dump()})


def test_members_train_apart_and_are_saved_in_one_versioned_directory(ensemble) -> None:  # type: ignore[no-untyped-def]
    _, index_dir, out, summary = ensemble
    manifest = Manifest.read(out)
    assert manifest.members == ["members/1"]
    assert (out / "members" / "1" / "model.safetensors").is_file()
    assert [m["seed_shift"] for m in summary["members"]] == [0, 1]
    assert all(m["validation"]["rounds"] for m in summary["members"])
    assert summary["timings"]["sft_s"] == pytest.approx(
        sum(m["timings"]["sft_s"] for m in summary["members"]))
    sid = SidRetriever.from_dirs(out, index_dir)
    assert len(sid.members) == 1
    a, b = dense_head_of(sid.model), dense_head_of(sid.members[0])
    assert not torch.allclose(a.query.weight, b.query.weight)  # another seed, another model
    assert b.use_text is not None  # the member's text map restored and shared with its head
    # the version hashes every member: the same first member alone is another version
    sid.members.clear()
    from leadre_model.llm.model import save_model

    alone = save_model(sid.model, sid.tokenizer, out.with_name("alone"), load_index(index_dir).digest())
    assert alone["model_version"] != manifest.model_version


def test_retrieval_ranks_by_the_members_mean_log_probability(ensemble) -> None:  # type: ignore[no-untyped-def]
    world, index_dir, out, _ = ensemble
    index = load_index(index_dir)
    sid = SidRetriever.from_dirs(out, index_dir)
    prompts = [s["prompt"] for s in build_samples(
        world, index, Manifest.read(out).prompt_config, ["main"], "test")[:4]]
    ids = sid.tokenizer(prompts)["input_ids"]
    mean = sum(torch.log_softmax(prompt_scores(m, dense_head_of(m), ids), 1)
               for m in (sid.model, *sid.members)) / 2
    allowed = torch.as_tensor(index.active) & dense_head_of(sid.model).fits
    want = mean.masked_fill(~allowed, float("-inf")).topk(5).indices.tolist()
    got = sid.retrieve(prompts, 10, top_k=5)
    assert [[h.row for h in hs] for hs in got] == want
    alone = torch.log_softmax(prompt_scores(sid.model, dense_head_of(sid.model), ids), 1)
    assert not torch.allclose(alone, mean)  # the member changes the scores
    # the beam re-rank uses the same mean
    sid.rerank = "dense"
    beam = sid.retrieve(prompts, 10, top_k=5)
    for i, hs in enumerate(beam):
        rows = [h.row for h in hs]
        assert rows == sorted(rows, key=lambda r: -float(mean[i, r]))
    # an index extended with new ads: every member scores them
    ext, _ = sid.extended(index, None)
    assert ext.members == sid.members
    assert [[h.row for h in hs] for hs in ext.retrieve(prompts, 10, top_k=5)] == want


def test_a_member_missing_from_disk_is_a_clear_error(ensemble, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, index_dir, out, _ = ensemble
    broken = tmp_path / "model"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "members" / "1")
    with pytest.raises(BadInputError, match="member 'members/1'"):
        SidRetriever.from_dirs(broken, index_dir)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["members"] = ["../elsewhere"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="outside the model"):
        SidRetriever.from_dirs(broken, index_dir)


def test_models_trained_apart_join_into_the_ensemble_trained_at_once(ensemble, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each member trained alone (as on two machines) and joined scores as the ensemble
    trained in one run: the members' seeds are all that tells them apart."""
    world, index_dir, out, _ = ensemble
    for i in (0, 1):
        alone = member_config(_config(2), i).model_copy(update={"members": 1})
        train_leadre(world, index_dir, tmp_path / f"m{i}", alone, progress=False)
    cli = subprocess.run([sys.executable, "-m", "leadre", "ensemble", "--model", str(tmp_path / "m0"),
                          "--model", str(tmp_path / "m1"), "--out", str(tmp_path / "joined")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0 and "2 members" in cli.stdout, cli.stderr
    manifest = Manifest.read(tmp_path / "joined")
    assert manifest.members == ["members/1"]
    assert [j["model"] for j in manifest.extra["joined"]] == [str(tmp_path / f"m{i}") for i in (0, 1)]
    assert manifest.model_version not in {Manifest.read(tmp_path / f"m{i}").model_version
                                          for i in (0, 1)}
    index = load_index(index_dir)
    prompts = [s["prompt"] for s in build_samples(
        world, index, manifest.prompt_config, ["main"], "test")[:4]]
    joined, trained = (SidRetriever.from_dirs(d, index_dir) for d in (tmp_path / "joined", out))
    ids = joined.tokenizer(prompts)["input_ids"]
    torch.testing.assert_close(ensemble_log_probs([joined.model, *joined.members], ids),
                               ensemble_log_probs([trained.model, *trained.members], ids))
    # an ensemble joined with a model is flattened: three members
    three = join_models([tmp_path / "joined", tmp_path / "m1"], tmp_path / "three")
    assert three["members"] == ["members/1", "members/2"]
    assert len(SidRetriever.from_dirs(tmp_path / "three", index_dir).members) == 2

    # bad input: a clear error naming the model, nothing written
    with pytest.raises(BadInputError, match="at least two"):
        join_models([tmp_path / "m0"], tmp_path / "bad")
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "m1", other)
    manifest_file = other / "manifest.json"
    manifest_file.write_text(manifest_file.read_text().replace(
        manifest.tokenizer_sha256, "0" * 64))
    with pytest.raises(BadInputError, match=f"{other}: another tokenizer"):
        join_models([tmp_path / "m0", other], tmp_path / "bad")
    config = json.loads((other / "config.json").read_text())
    del config["leadre_dense_head"]
    (other / "config.json").write_text(json.dumps(config))
    bad = subprocess.run([sys.executable, "-m", "leadre", "ensemble", "--model", str(tmp_path / "m0"),
                          "--model", str(other), "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stdout + bad.stderr
    assert "has no dense head" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_member_taken_out_scores_as_it_did_inside(ensemble, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`leadre ensemble --take I` writes one member as a model of its own (to evaluate or
    serve it alone): it scores as that member did inside the ensemble."""
    world, index_dir, out, _ = ensemble
    index = load_index(index_dir)
    manifest = Manifest.read(out)
    prompts = [s["prompt"] for s in build_samples(
        world, index, manifest.prompt_config, ["main"], "test")[:4]]
    inside = SidRetriever.from_dirs(out, index_dir)
    ids = inside.tokenizer(prompts)["input_ids"]
    for i, member in enumerate((inside.model, *inside.members)):
        cli = subprocess.run([sys.executable, "-m", "leadre", "ensemble", "--model", str(out),
                              "--take", str(i), "--out", str(tmp_path / f"m{i}")],
                             capture_output=True, text=True, timeout=300, check=False)
        assert cli.returncode == 0 and f"member {i} of" in cli.stdout, cli.stderr
        taken = Manifest.read(tmp_path / f"m{i}")
        assert taken.members == [] and taken.extra["taken"]["member"] == i
        assert taken.num_parameters * 2 == manifest.num_parameters
        assert taken.model_version != manifest.model_version
        alone = SidRetriever.from_dirs(tmp_path / f"m{i}", index_dir)
        assert alone.members == []
        torch.testing.assert_close(ensemble_log_probs([alone.model], ids),
                                   ensemble_log_probs([member], ids))
    assert Manifest.read(tmp_path / "m0").model_version != Manifest.read(tmp_path / "m1").model_version
    # bad input: a clear error, nothing written
    with pytest.raises(BadInputError, match="no member 2"):
        take_member(out, 2, tmp_path / "bad")
    bad = subprocess.run([sys.executable, "-m", "leadre", "ensemble", "--model", str(out),
                          "--model", str(out), "--take", "0", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "give one --model" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()


def test_the_daily_run_refuses_to_continue_an_ensemble(ensemble, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Continued fine-tuning takes one model: it must not quietly serve member 0 alone."""
    from services.common.settings import Settings
    from services.pipeline.daily import continue_training

    world, index_dir, out, _ = ensemble
    with pytest.raises(BadInputError, match="an ensemble of 2 models"):
        continue_training(out, world, index_dir, tmp_path / "m", Settings())
    assert not (tmp_path / "m").exists()


def test_a_served_ensemble_scores_ads_added_live(ensemble) -> None:  # type: ignore[no-untyped-def]
    """The inference bundle's live index adds ads in place: every member's dense head then
    covers them (before, the heads' tables kept the old size and full ranking failed)."""
    import itertools

    import numpy as np

    from leadre_model.index.live import CatalogEvent
    from services.inference.bundle import Bundle

    world, index_dir, out, _ = ensemble
    bundle = Bundle("v1", SidRetriever.from_dirs(out, index_dir))
    index = bundle.sid.index
    n, taken = len(index), set(map(tuple, index.codes.tolist()))
    codes = next(c for c in itertools.product(*map(range, index.level_sizes)) if c not in taken)
    assert bundle.apply([CatalogEvent(op="add", ad_id="ad-live-1", codes=codes)]) == []
    assert len(index) == n + 1 and index.active[n]
    prompts = [s["prompt"] for s in build_samples(
        world, index, Manifest.read(out).prompt_config, ["main"], "test")[:3]]
    results = bundle.retrieve(prompts, 10, [10, 10, 10])
    assert all(len(r.ads) == 10 for r in results)
    for m in (bundle.model, *bundle.sid.members):
        assert dense_head_of(m).item_codes.shape[0] == n + 1
    logp = ensemble_log_probs([bundle.model, *bundle.sid.members],
                              bundle.tokenizer(prompts)["input_ids"])
    assert logp.shape == (3, n + 1) and np.isfinite(logp[:, n].numpy()).all()
