"""The ablation runner on a tiny world: trains the reference (+DPO) and the Table-1 and
Table-2 "main only" variants, evaluates them beside the baselines on one split, writes the
report with its tables and plots; a second run reuses the trained models."""

from __future__ import annotations

import json

import pytest

from leadre_model.data.synth import SynthConfig
from leadre_model.eval.harness import EvalConfig
from leadre_model.experiments.ablations import VARIANTS, AblationConfig, run_ablations
from leadre_model.experiments.presets import EXPERIMENT_TRAIN
from leadre_model.llm.model import LLMConfig
from leadre_model.train.sft import SFT_PRESETS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("abl") / "run"
    train = EXPERIMENT_TRAIN.model_copy(update={
        "llm": LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1),
        "sft": EXPERIMENT_TRAIN.sft.model_copy(update={"epochs": 0.3, "logging_steps": 1}),
        "dpo": EXPERIMENT_TRAIN.dpo.model_copy(update={"logging_steps": 1}),
        "max_samples_per_task": 40, "dpo_users": 16,
    })
    cfg = AblationConfig(world=SynthConfig(n_users=40, n_ads=120, n_content=120), train=train,
                         eval=EvalConfig(dice_drops=(1, 2), progress=False),
                         baselines=("popularity", "itemcf"), studies=("table1", "fig4b", "fig5"),
                         pretrain=SFT_PRESETS["lm-tiny"].model_copy(update={"epochs": 0.5}),
                         beam_width=8, progress=False)
    logs: list[str] = []
    results = run_ablations(cfg, out, log=logs.append)
    return cfg, out, results, logs


def test_every_variant_starts_from_the_shared_lm_base(tiny_run):
    _, out, results, logs = tiny_run
    base = out / "models" / "base"
    assert [s["stage"] for s in json.loads((base / "train_log.json").read_text())["sft"]] == ["lm"]
    for name in ("reference_dpo", "wo_content", "wo_summary"):
        cfg = json.loads((out / "models" / name / "train_log.json").read_text())["config"]
        assert cfg["llm"]["base"] == str(base.resolve()) and "lm" not in cfg["curriculum"]
    assert results["timings"]["train_base_s"] > 0 and any("base model" in m for m in logs)


def test_every_variant_is_trained_and_scored(tiny_run):
    _, out, results, _ = tiny_run
    rows = results["retrievers"]
    expected = {"popularity", "itemcf", "reference", "reference_dpo"} | {
        v.name for v in VARIANTS if v.study == "table1"}
    assert expected == set(rows)
    for name in expected - {"popularity", "itemcf"}:
        assert rows[name]["invalid_rate"] == 0.0  # constrained decoding: only real ads
        assert 0.0 <= rows[name]["hr@8"] <= 1.0
        assert "dice_drop2@8" in rows[name]
    saved = json.loads((out / "results.json").read_text())
    assert saved["retrievers"].keys() == rows.keys()


def test_report_has_tables_checks_and_plots(tiny_run):
    _, out, _, _ = tiny_run
    report = (out / "report.md").read_text()
    for heading in ("## Done-when checks", "## All models", "## Table 1", "## Fig. 4b",
                    "## Fig. 5", "## Wall time per stage"):
        assert heading in report
    assert "w.o. content" in report and "LEADRE + DPO" in report
    assert "PASS" in report or "FAIL" in report
    for png in ("ablations.png", "fig4b_dpo.png", "fig5_dice.png", "loss_curves.png"):
        assert (out / png).stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["studies"] == ["table1", "fig4b", "fig5"]


def test_rerun_reuses_trained_models(tiny_run):
    cfg, out, first, _ = tiny_run
    logs: list[str] = []
    again = run_ablations(cfg, out, log=logs.append)
    assert not any(m.startswith("training") for m in logs)  # nothing retrained
    def figures(r: dict) -> dict:
        return {k: v for k, v in r.items() if not k.endswith("_s")}  # not the timings

    assert figures(again["retrievers"]["reference"]) == figures(first["retrievers"]["reference"])
    # reused models report the training time they were saved with, not ~0
    assert again["timings"]["train_wo_content_s"] == first["timings"]["train_wo_content_s"] > 0


def test_unknown_study_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown studies"):
        run_ablations(AblationConfig(studies=("table9",)), tmp_path)


def test_recipe_index_variant_trains_on_its_own_index(tmp_path):
    """An index-side recipe variant (collaborative S-IDs) gets its own index from the same
    world; train-config variants share the reference index."""
    from leadre_model.data.synth import generate_world
    from leadre_model.experiments.recipe import _variant_index, variant_config
    from leadre_model.index.sid_index import load_index

    world_cfg = SynthConfig(n_users=80, n_ads=150, n_content=100, seed=1)
    generate_world(tmp_path / "world", world_cfg, progress=False)
    assert variant_config("collab") == variant_config("reference")
    ref = _variant_index(tmp_path, tmp_path / "world", world_cfg, "wo_summary")
    own = _variant_index(tmp_path, tmp_path / "world", world_cfg, "collab")
    assert ref.name == "index" and own.name == "index-collab"
    assert load_index(own).config.collab.weight == 0.5
    assert load_index(ref).config.collab.weight == 0.0
    assert load_index(own).ad_ids == load_index(ref).ad_ids
