"""A time-budgeted stage fits its learning-rate schedule to the budget (train/validate.py
``fit_schedule``): the cosine reaches its floor at the last whole epoch that fits, and the
stage stops there instead of running on at a rising rate."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, get_scheduler

from leadre_model.train.validate import BestOnValidation, ValidationConfig


class _Scores:
    """Validation scores in order (the validator's interface: a call, and its targets)."""

    def __init__(self, *scores: float) -> None:
        self.scores, self.targets = list(scores), ["t"]

    def __call__(self, model, tokenizer) -> float:
        return self.scores.pop(0)


def _setup(budget: float, fit: bool):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=0, num_training_steps=100,
                          scheduler_specific_kwargs={"min_lr": 1e-4})
    cfg = ValidationConfig(every_epochs=1, patience=5, time_budget_s=budget, fit_schedule=fit)
    cb = BestOnValidation(_Scores(*[0.1 * i for i in range(1, 11)]), cfg, tokenizer=None)
    args = SimpleNamespace(num_train_epochs=10)  # 10 steps per epoch
    state = SimpleNamespace(epoch=0.0, global_step=0, max_steps=100)
    return model, opt, sched, cb, args, state


def _run(model, opt, sched, cb, args, state, seconds_per_epoch: float,
         first_epoch_s: float | None = None) -> list[float]:
    """Steps until the callback stops the stage; the clock is moved, not waited for (the
    optimizer is passed as the trainer does: a fork's trunk takes its fork point from it).
    ``first_epoch_s``: a slower first epoch (a load burst), ``seconds_per_epoch`` after it."""
    lrs, clock = [], 0.0
    while state.global_step < state.max_steps:
        opt.step()
        sched.step()
        state.global_step += 1
        state.epoch = state.global_step / 10
        slow = first_epoch_s is not None and state.global_step <= 10
        clock += (first_epoch_s if slow else seconds_per_epoch) / 10
        cb._t0 = time.perf_counter() - clock
        lrs.append(opt.param_groups[0]["lr"])
        control = cb.on_step_end(args, state, TrainerControl(), model=model, optimizer=opt,
                                 lr_scheduler=sched)
        if control.should_training_stop:
            break
    return lrs


def test_the_schedule_ends_annealed_at_the_budget():
    parts = _setup(budget=355.0, fit=True)  # 100 s per epoch: 3 whole epochs fit, not 10
    cb, state = parts[3], parts[5]
    lrs = _run(*parts, seconds_per_epoch=100.0)
    assert state.global_step == 30  # stopped where the fitted schedule ends
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-3)  # at the floor, not cut mid-way
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # never rises again
    assert cb.history[0]["schedule_epochs"] == 3 and cb.stopped_by == "time_budget"


def test_without_fitting_the_budget_cuts_the_schedule_high():
    parts = _setup(budget=355.0, fit=False)
    state = parts[5]
    lrs = _run(*parts, seconds_per_epoch=100.0)
    assert state.global_step == 36  # the first step past 355 s
    assert lrs[-1] > 50 * 1e-4  # still far above the floor


def test_a_budget_that_holds_every_epoch_leaves_the_schedule_alone():
    parts = _setup(budget=10_000.0, fit=True)
    sched, state = parts[2], parts[5]
    _run(*parts, seconds_per_epoch=100.0)
    assert state.global_step == 100
    assert sched.lr_lambdas[0].keywords["num_training_steps"] == 100


@pytest.mark.parametrize(("patience", "steps"), [(1, 20), (None, 100)])
def test_patience_none_runs_the_schedule_out_and_keeps_the_best_round(patience, steps):
    """A cosine's best rounds come once it has annealed; rounds without a gain while the
    rate is still high stop a stage with patience, never one without."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=100)
    cfg = ValidationConfig(every_epochs=1, patience=patience)
    cb = BestOnValidation(_Scores(0.5, *[0.1] * 9), cfg, tokenizer=None)
    args = SimpleNamespace(num_train_epochs=10)
    state = SimpleNamespace(epoch=0.0, global_step=0, max_steps=100)
    _run(model, opt, sched, cb, args, state, seconds_per_epoch=1.0)
    assert state.global_step == steps
    assert cb.best_round == 0 and len(cb.history) == steps // 10
    assert cb.stopped_by == ("early_stopping" if patience else "epochs")


def test_one_slow_epoch_does_not_shorten_the_schedule_for_good():
    """A load burst in the first epoch (400 s, then 100 s each) fits 3 epochs at first;
    once the median pace is back, the schedule returns to the whole 10 the budget holds."""
    parts = _setup(budget=1_500.0, fit=True)
    sched, cb, state = parts[2], parts[3], parts[5]
    lrs = _run(*parts, seconds_per_epoch=100.0, first_epoch_s=400.0)
    assert cb.history[0]["schedule_epochs"] == 3  # 1 + (1,500 − 400) // 400
    assert state.global_step == 100 and cb.stopped_by == "epochs"
    assert sched.lr_lambdas[0].keywords["num_training_steps"] == 100
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-3)  # annealed at the end


def test_a_fork_splits_one_fitted_schedule_between_trunk_and_branch():
    """The trunk fits the shared cosine to its budget (8 of 10 epochs), forks at half of it;
    a branch goes on from there on the same cosine and ends annealed at the same horizon,
    its rounds and horizon counted in the run's epochs and steps."""
    from leadre_model.train.fork import branch_optimizers

    model, opt, sched, _, args, state = _setup(budget=855.0, fit=True)
    cfg = ValidationConfig(every_epochs=1, patience=None, time_budget_s=855.0, fit_schedule=True)
    trunk = BestOnValidation(_Scores(*[0.1] * 10), cfg, tokenizer=None, fork_share=0.5)
    trunk_lrs = _run(model, opt, sched, trunk, args, state, seconds_per_epoch=100.0)
    assert trunk.history[0]["schedule_epochs"] == 8 and trunk.stopped_by == "fork"
    point = trunk.fork
    assert (point.epoch, point.step, state.global_step) == (4.0, 40, 40)

    branch = torch.nn.Linear(2, 2)
    branch.load_state_dict(model.state_dict())
    b_opt, b_sched = branch_optimizers(branch, point)
    b_cfg = cfg.model_copy(update={"time_budget_s": 455.0})  # the 4 epochs left, and a margin
    cb = BestOnValidation(_Scores(*[0.1] * 10), b_cfg, tokenizer=None, start=point)
    b_state = SimpleNamespace(epoch=0.0, global_step=0, max_steps=60)  # 10 - 4 epochs
    lrs = _run(branch, b_opt, b_sched, cb, SimpleNamespace(num_train_epochs=6), b_state,
               seconds_per_epoch=100.0)
    assert b_state.global_step == 40  # the run's step 80: the fitted horizon
    assert [r["epoch"] for r in cb.history] == [5.0, 6.0, 7.0, 8.0]
    assert lrs[0] < trunk_lrs[-1] and all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-3)
