"""Forking a training run (TrainConfig.fork): the members of an ensemble share the first part
of their schedule (one trunk) and each goes on from it with its own seeds.

Independent members each pay for the whole schedule, so within a fixed budget two members
get half the epochs one model would. A fork point keeps the optimizer exactly where the
trunk left it: the same weights, Adam's moments and step counts, and the learning-rate
schedule at the same step, so every branch continues the trunk's cosine as one run would;
only the data order, dropout and ad deletion (the seeds) differ from the fork on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ForkPoint:
    """Where the trunk stopped: its epoch and optimizer step, and what a branch needs to
    continue from there (the optimizer's class, groups by parameter name and state, the
    scheduler's state and its learning-rate functions)."""

    epoch: float
    step: int
    optimizer_cls: type[torch.optim.Optimizer]
    groups: list[dict[str, Any]]  # each group's settings, "params": parameter names
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    lr_lambdas: list[Any]


def fork_point(model: torch.nn.Module, optimizer: Any, scheduler: Any, epoch: float,
               step: int) -> ForkPoint:
    """Capture the trunk's optimizer and scheduler (copies: the trunk may go on)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the trainer's
    if not hasattr(scheduler, "lr_lambdas"):
        raise TypeError(f"forking needs a LambdaLR schedule (the trainer's cosine), not "
                        f"{type(scheduler).__name__}")
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [name_of[id(p)] for p in g["params"]]} for g in inner.param_groups]
    return ForkPoint(epoch=epoch, step=step, optimizer_cls=type(inner), groups=groups,
                     optimizer_state=copy.deepcopy(inner.state_dict()),
                     scheduler_state=copy.deepcopy(scheduler.state_dict()),
                     lr_lambdas=list(scheduler.lr_lambdas))


def branch_optimizers(model: torch.nn.Module, point: ForkPoint,
                      ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """An optimizer over ``model`` (a copy of the trunk) in the trunk's state at the fork,
    and the trunk's schedule at the fork's step, for a trainer's ``optimizers``. Each call
    gets its own copy of the state, so branches never share Adam's moments."""
    params = dict(model.named_parameters())
    missing = [n for g in point.groups for n in g["params"] if n not in params]
    if missing:
        raise ValueError(f"the model lacks the trunk's parameters, e.g. {missing[:3]}")
    groups = [{**g, "params": [params[n] for n in g["params"]]} for g in point.groups]
    optimizer = point.optimizer_cls(groups)
    optimizer.load_state_dict(copy.deepcopy(point.optimizer_state))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, list(point.lr_lambdas))
    scheduler.load_state_dict(copy.deepcopy(point.scheduler_state))
    # the constructor set the step-0 rate; the rate at the fork is the scheduler's last
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    return optimizer, scheduler
