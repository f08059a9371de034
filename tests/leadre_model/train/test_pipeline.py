"""The alignment run end to end on a tiny world: samples → tokenizer → tiny Qwen2 →
EX → IM → Main → DPO → saved model that decodes real, active ads for held-out users."""

from __future__ import annotations

import pytest

from leadre_model.data.store import load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.build import build_index
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig, load_index
from leadre_model.llm.decode import constrained_beam_search
from leadre_model.llm.model import load_model
from leadre_model.llm.tokenizer import level_token_ids
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    world, index_dir, model_dir = root / "world", root / "index", root / "model"
    generate_world(world, SynthConfig(n_users=40, n_ads=150, n_content=150), progress=False)
    build_index(load_ads(world), index_dir,
                IndexConfig(rqvae=PRESETS["tiny"].model_copy(update={"epochs": 10})),
                cache_path=root / "emb.npz", progress=False)
    base = TRAIN_PRESETS["text-small"]
    cfg = base.model_copy(update={
        "sft": base.sft.model_copy(update={"epochs": 1, "logging_steps": 1}),
        "lm": base.lm.model_copy(update={"epochs": 1, "logging_steps": 1}),
        "dpo": base.dpo.model_copy(update={"logging_steps": 1}),
        "max_samples_per_task": 60,
        "dpo_users": 20,
    })
    summary = train_leadre(world, index_dir, model_dir, cfg, progress=False)
    return world, index_dir, model_dir, summary


def test_every_stage_ran_and_was_logged(trained):
    _, _, model_dir, summary = trained
    assert [s["stage"] for s in summary["sft"]] == ["lm", "ex", "im", "main"]
    assert all(s["samples"] > 0 and s["history"] for s in summary["sft"])
    assert summary["dpo_pairs"] > 0 and summary["dpo"]
    assert (model_dir / "train_log.json").exists()
    assert (model_dir / "training.png").stat().st_size > 0
    assert list(model_dir.glob("*.safetensors"))


def test_saved_model_decodes_active_ads_for_held_out_users(trained):
    world, index_dir, model_dir, _ = trained
    index = load_index(index_dir)
    model, tok, manifest = load_model(model_dir, expected_index_digest=index.digest())
    assert manifest["index_digest"] == index.digest()
    samples = build_samples(world, index, TRAIN_PRESETS["text-small"].prompts, ["main"], "test")[:4]
    hits = constrained_beam_search(model, tok, [s["prompt"] for s in samples], index.build_trie(),
                                   level_token_ids(tok, index.level_sizes), beam_width=8)
    for user_hits in hits:
        rows = [h.row for h in user_hits]
        assert len(rows) == 8 and len(set(rows)) == 8  # distinct beams
        assert index.active[rows].all()  # only real, active ads


def test_model_refuses_another_index(trained, tmp_path):
    _, _, model_dir, _ = trained
    with pytest.raises(ValueError, match="index"):
        load_model(model_dir, expected_index_digest="0" * 64)


def test_a_checkpoint_base_is_fine_tuned_with_its_own_tokenizer(trained, tmp_path):
    # The saved model as `--base`: its tokenizer (with the S-ID tokens) must be reused, not a
    # new one trained on the corpus, or token ids would no longer match the embeddings.
    world, index_dir, model_dir, _ = trained
    base_tok = load_model(model_dir)[1]
    cfg = TRAIN_PRESETS["text-small"].model_copy(update={
        "llm": TRAIN_PRESETS["text-small"].llm.model_copy(update={"base": str(model_dir)}),
        "curriculum": "main", "dpo": None, "max_samples_per_task": 20,
        "sft": TRAIN_PRESETS["text-small"].sft.model_copy(update={"epochs": 1})})
    train_leadre(world, index_dir, tmp_path / "ft", cfg, progress=False)
    tok = load_model(tmp_path / "ft")[1]
    assert tok.get_vocab() == base_tok.get_vocab()


def test_cpu_recipe_trains_dense_rows_then_dpo_and_decodes(trained, tmp_path):
    """The demo preset (compact prompts, the seq stage, DPO) end to end on the same world."""
    world, index_dir, _, _ = trained
    base = TRAIN_PRESETS["demo"]
    cfg = base.model_copy(update={
        "seq": base.seq.model_copy(update={"epochs": 2, "logging_steps": 1}),
        "dpo": base.dpo.model_copy(update={"logging_steps": 1}), "dpo_users": 20})
    summary = train_leadre(world, index_dir, tmp_path / "m", cfg, progress=False)
    assert [s["stage"] for s in summary["sft"]] == ["seq"]
    assert summary["samples"]["seq"] == 40  # one row per user, every user
    assert summary["dpo_pairs"] > 0
    index = load_index(index_dir)
    model, tok, _ = load_model(tmp_path / "m", expected_index_digest=index.digest())
    samples = build_samples(world, index, cfg.prompts, ["main"], "test")[:4]
    assert all(s["prompt"].endswith("<|ad|>") for s in samples)
    hits = constrained_beam_search(model, tok, [s["prompt"] for s in samples], index.build_trie(),
                                   level_token_ids(tok, index.level_sizes), beam_width=8)
    assert all(len({h.row for h in hs}) == 8 and index.active[[h.row for h in hs]].all()
               for hs in hits)


def test_manifest_records_the_device_and_the_model_loads_on_one(trained):
    import torch

    from leadre_model.llm.manifest import Manifest
    from leadre_model.llm.retriever import SidRetriever

    _, index_dir, model_dir, summary = trained
    assert summary["device"].startswith("cpu (")
    assert "sft_s_per_epoch" in summary["timings"]
    assert Manifest.read(model_dir).trained_on == summary["device"]
    sid = SidRetriever.from_dirs(model_dir, index_dir, device=torch.device("cpu"))
    assert sid.model.device.type == "cpu"


def test_refit_selects_on_the_holdout_and_eval_gives_baselines_the_same_split(trained, tmp_path):
    """`holdout_users`: validation scores only the holdout's users; `leadre eval` takes the
    holdout from the model for every baseline and refuses a different one."""
    import json
    import subprocess
    import sys

    from leadre_model.train.validate import ValidationConfig

    world, index_dir, _, _ = trained
    base = TRAIN_PRESETS["cpu"]
    cfg = base.model_copy(update={
        "seq": base.seq.model_copy(update={"epochs": 1, "logging_steps": 1}),
        "validation": ValidationConfig(users=500, every_epochs=1.0), "holdout_users": 12})
    summary = train_leadre(world, index_dir, tmp_path / "m", cfg, progress=False)
    assert summary["validation"]["users"] == 12 and summary["config"]["holdout_users"] == 12
    assert summary["samples"]["seq"] == 40

    def leadre(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leadre", "eval", "--world", str(world),
                               "--index", str(index_dir), "--model", str(tmp_path / "m"),
                               "--baselines", "itemcf", "--exclude-seen", "off",
                               "--no-progress", *args],
                              capture_output=True, text=True, timeout=600, check=False)

    bad = leadre("--holdout-users", "7")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr + bad.stdout
    assert "trained with holdout_users 12" in bad.stderr, bad.stderr
    ok = leadre("--out", str(tmp_path / "eval"))
    assert ok.returncode == 0, ok.stderr
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["config"]["holdout_users"] == 12 and res["data"]["valid"] == 12
    assert set(res["retrievers"]) == {"itemcf", "leadre"}
