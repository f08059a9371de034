"""Forked ensembles (TrainConfig.fork, train/fork.py): the members share a trunk for the
first part of the schedule, then each goes on from the trunk's weights, optimizer state and
learning rate with its own seeds."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from transformers import get_scheduler

from leadre_model.llm.dense_head import dense_head_of
from leadre_model.llm.model import DenseHeadSettings
from leadre_model.train.fork import branch_optimizers, fork_point
from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig, train_leadre, trunk_config
from leadre_model.train.validate import ValidationConfig


def _trained_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched, x: torch.Tensor):
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()
    sched.step()


def test_a_branch_continues_the_trunk_exactly_and_owns_its_state() -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(trunk.parameters(), lr=1e-2, weight_decay=0.0)
    sched = get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=2, num_training_steps=20,
                          scheduler_specific_kwargs={"min_lr": 1e-4})
    x = torch.randn(16, 4)
    for _ in range(6):
        _trained_step(trunk, opt, sched, x)
    point = fork_point(trunk, opt, sched, epoch=3.0, step=6)
    branches = [copy.deepcopy(trunk) for _ in range(2)]
    made = [branch_optimizers(b, point) for b in branches]
    # the trunk, and the first branch from the same fork, take the same next steps
    for _ in range(4):
        _trained_step(trunk, opt, sched, x)
        _trained_step(branches[0], *made[0], x)
    for a, b in zip(trunk.parameters(), branches[0].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert made[0][1].last_epoch == sched.last_epoch == 10
    assert made[0][0].param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    # the second branch did not move: its Adam moments were never shared with the first
    b1_opt = made[1][0]
    first = next(iter(b1_opt.state.values()))
    assert int(first["step"]) == 6
    assert not any(s["exp_avg"].data_ptr() == t["exp_avg"].data_ptr()
                   for s, t in zip(b1_opt.state.values(), made[0][0].state.values()))
    with pytest.raises(ValueError, match="lacks the trunk's parameters"):
        branch_optimizers(torch.nn.Linear(4, 2), point)


def _config(fork: float | None = 0.5, epochs: float = 4) -> TrainConfig:
    base = TRAIN_PRESETS["cpu"]
    return base.model_copy(update={
        "llm": base.llm.model_copy(update={"dense_head": DenseHeadSettings(
            rerank="full", id_input=True)}),
        "seq": base.seq.model_copy(update={"epochs": epochs, "logging_steps": 1}),
        "validation": ValidationConfig(users=40, every_epochs=1.0, patience=None,
                                       time_budget_s=600.0, fit_schedule=True),
        "members": 2, "fork": fork})


def test_the_trunk_gets_the_budget_of_the_shared_schedule() -> None:
    cfg = _config()
    # 600 s over 0.5 + 2 × 0.5: the trunk's half once, each branch's half twice
    assert trunk_config(cfg).validation.time_budget_s == pytest.approx(400.0)
    assert trunk_config(cfg).seq.seed == cfg.seq.seed  # member 0's seeds
    with pytest.raises(ValueError, match="every_epochs"):
        TrainConfig.model_validate({**cfg.model_dump(), "validation": {
            **cfg.validation.model_dump(), "every_epochs": 2.0}})
    with pytest.raises(ValueError, match="members > 1"):
        TrainConfig.model_validate({**cfg.model_dump(), "members": 1})
    assert TRAIN_PRESETS["cpu-90m-fork"].fork == 0.5


def test_members_fork_from_one_trunk_and_go_on_apart(tiny_world_index, tmp_path) -> None:  # type: ignore[no-untyped-def]
    world, index_dir = tiny_world_index
    summary = train_leadre(world, index_dir, tmp_path / "model", _config(), progress=False)
    trunk = summary["trunk"]
    assert trunk["fork_epoch"] == 2.0 and trunk["validation"]["stopped_by"] == "fork"
    assert [r["epoch"] for r in trunk["validation"]["rounds"]] == [1.0, 2.0]
    for member in summary["members"]:
        # each member's rounds go on from the fork to the end of the shared schedule
        assert [r["epoch"] for r in member["validation"]["rounds"]] == [3.0, 4.0]
    # the run's training time is the trunk's once plus each branch's
    assert summary["timings"]["sft_s"] == pytest.approx(
        trunk["timings"]["sft_s"] + sum(m["timings"]["sft_s"] for m in summary["members"]))
    # member 0's log is the trunk's, then its own, its epochs counted from the run's start
    seq = [h["epoch"] for log in summary["sft"] for h in log["history"]]
    assert seq == sorted(seq) and seq[-1] == pytest.approx(4.0)
    from leadre_model.llm.retriever import SidRetriever

    sid = SidRetriever.from_dirs(tmp_path / "model", index_dir)
    a, b = dense_head_of(sid.model), dense_head_of(sid.members[0])
    assert not torch.allclose(a.query.weight, b.query.weight)  # the seeds took them apart


def test_the_cli_trains_the_fork_preset_and_refuses_a_fork_of_one(tiny_world_index,
                                                                    tmp_path) -> None:  # type: ignore[no-untyped-def]
    world, index_dir = tiny_world_index
    base = [sys.executable, "-m", "leadre", "train", "--world", str(world), "--index",
            str(index_dir), "--preset", "cpu-90m-fork", "--no-progress"]
    bad = subprocess.run([*base, "--out", str(tmp_path / "one"), "--members", "1"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "fork needs members > 1" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr and not (tmp_path / "one").exists()
    ok = subprocess.run([*base, "--out", str(tmp_path / "fork"), "--epochs", "2"],
                        capture_output=True, text=True, timeout=600, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "forked at epoch 1" in ok.stdout and "member 1:" in ok.stdout
    assert (tmp_path / "fork" / "members" / "1" / "model.safetensors").is_file()
