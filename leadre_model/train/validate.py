"""Model selection on the validation split while training.

A preset fixes an epoch count, but how many epochs a catalog needs before the model
overfits depends on the catalog (a 1,000-user synthetic world and 19,412 Amazon users
differ by an order of magnitude). So, as SASRec does, the `seq` stage scores Recall@K on
held-out validation targets (each user's second-to-last target, never a training target)
every few epochs with the same constrained beam search the product serves with, keeps the
best weights, stops after ``patience`` rounds without a gain or at the time budget, and
restores the best weights at the end. The scores land in the training log.

With ``average_decay`` the weights scored, kept and restored are an exponential moving
average of the trained ones (updated after every optimizer step, as
``torch.optim.swa_utils``' EMA does): an average over the last ≈ 1/(1 − decay) steps sits
in a flatter region than the last step's weights, which generalises better to contexts the
model has not fitted. With ``score_raw`` each round also scores the raw weights, so the
log shows what the average adds.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from leadre_model.configbase import StrictConfig
from leadre_model.errors import BadInputError
from leadre_model.index.sid_index import SidIndex
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import Hit, encode_prompts
from leadre_model.llm.dense_head import DenseHead, dense_head_of, prompt_scores, rerank_hits
from leadre_model.llm.retriever import SidRetriever
from leadre_model.train.fork import ForkPoint, fork_point


class ValidationConfig(StrictConfig):
    users: int = Field(500, ge=1, description="validation users scored per round (seeded sample)")
    k: int = Field(10, ge=1, description="Recall@k is the selection score")
    beam_width: int = Field(20, ge=1)
    every_epochs: float = Field(2.0, gt=0, description="a round every this many epochs")
    patience: int | None = Field(3, ge=1, description="rounds without a gain before stopping; "
                                 "None: never early (the schedule runs to its end or the time "
                                 "budget, the best round is still the one kept)")
    time_budget_s: float | None = Field(None, gt=0, description="stop the stage after this "
                                        "many seconds of training (best weights kept)")
    fit_schedule: bool = Field(False, description="with a time budget: after every round, "
                               "fit the learning-rate schedule to the whole epochs the time left "
                               "holds at the median epoch's pace (never beyond the configured "
                               "epochs), so a large catalog's run ends annealed instead of "
                               "being cut at a high learning rate")
    average_decay: float | None = Field(None, gt=0, lt=1, description="select an "
                                        "exponential moving average of the weights (this "
                                        "decay per optimizer step) instead of the weights "
                                        "themselves")
    score_raw: bool = Field(False, description="with average_decay: each round also scores "
                            "the raw weights (the log shows what the average adds; a second "
                            "validation pass per round) and keeps the best of them")
    batch_size: int = Field(64, ge=1)
    every_use: bool = Field(True, description="a model with a dense head is also scored with "
                            "every other use of its head (each a figure in the log); off: "
                            "only as it retrieves, so a `full` head needs no beam search and "
                            "thousands of users cost seconds")


class SidValidator:
    """Recall@k of a model on fixed validation prompts (prompt → target ad id)."""

    def __init__(self, index: SidIndex, samples: Sequence[Mapping[str, Any]],
                 cfg: ValidationConfig, trie: SidTrie | None = None) -> None:
        """``trie``: the index's (built from it when not given)."""
        if not samples:
            raise BadInputError("no validation samples: the world has no user with a "
                                "validation target")
        self.index, self.cfg = index, cfg
        self.prompts = [s["prompt"] for s in samples]
        self.targets = [s["target_ad"] for s in samples]
        self.trie = trie if trie is not None else index.build_trie()
        self.extra: dict[str, float] = {}  # the last round's other figures

    def __call__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> float:
        """Recall@k as the model retrieves; a model with a dense head (llm/dense_head.py)
        is also scored with every other use of its head, into :attr:`extra`."""
        was_training = model.training
        model.eval()
        self.extra: dict[str, float] = {}
        try:
            sid = SidRetriever(model, tokenizer, self.index, self.trie)
            beam = max(self.cfg.beam_width, self.cfg.k)
            head = dense_head_of(model)
            if head is None or not self.cfg.every_use:
                hits = sid.retrieve(self.prompts, beam, top_k=self.cfg.k,
                                    batch_size=self.cfg.batch_size)
            else:
                hits = self._every_rerank(sid, head, beam)
        finally:
            model.train(was_training)
        return self._recall(sid, hits)

    def _recall(self, sid: SidRetriever, hits: Sequence[Sequence[Hit]]) -> float:
        found = sum(t in set(ads) for t, ads in zip(self.targets, sid.ad_ids(hits)))
        return found / len(self.targets)

    def _every_rerank(self, sid: SidRetriever, head: DenseHead, beam: int) -> list[list[Hit]]:
        sid.rerank = "off"
        beams = sid.retrieve(self.prompts, beam, batch_size=self.cfg.batch_size)
        scores = prompt_scores(sid.model, head, encode_prompts(sid.tokenizer, self.prompts),
                               self.cfg.batch_size)
        out = {}
        for mode in ("off", "dense", "mix", "full", "fuse"):
            out[mode] = rerank_hits(sid.model, head, sid.tokenizer, self.prompts, beams, mode,
                                    self.cfg.k, self.index, scores=scores,
                                    level_ids=sid.level_ids)
            self.extra[f"valid_recall@{self.cfg.k}_{mode}"] = self._recall(sid, out[mode])
        return out[head.rerank]


class BestOnValidation(TrainerCallback):
    """Score every ``every_epochs``; keep the best weights; early-stop; restore at the end.

    As a fork's trunk (``fork_share``) it stops at the first round at or past that share of
    the schedule's epochs (as fitted so far), keeps its last weights and leaves the fork
    point in :attr:`fork`. As a branch (``start``: the trunk's fork point) its trainer counts
    from 0 while the schedule goes on from the fork: epochs and steps here are the run's
    (the trunk's plus the branch's), so rounds, the fitted horizon and the log read as one
    run."""

    def __init__(self, validator: SidValidator, cfg: ValidationConfig,
                 tokenizer: PreTrainedTokenizerBase,
                 report: Callable[[str], None] | None = None,
                 fork_share: float | None = None, start: ForkPoint | None = None) -> None:
        """``report``: told one line per round (a 90-minute run shows where it stands)."""
        self.validator, self.cfg, self.tokenizer = validator, cfg, tokenizer
        self.report = report
        self.fork_share = fork_share
        self.fork: ForkPoint | None = None
        self._epoch0, self._step0 = (start.epoch, start.step) if start else (0.0, 0)
        self.history: list[dict[str, float]] = []
        self.best_round = -1  # index into history; the best score and epoch are read there
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_by = "epochs"
        self._next = self._epoch0 + cfg.every_epochs
        self._t0 = time.perf_counter()
        self._stop_at: int | None = None  # the fitted schedule's last step
        self._average: list[torch.Tensor] | None = None  # EMA of the parameters, if asked
        self._ema: Callable[..., None] | None = None  # its update, from torch.optim.swa_utils
        self.best_raw_state: dict[str, torch.Tensor] | None = None  # with score_raw
        self._best_raw = -1.0

    def _round(self, model: PreTrainedModel, epoch: float) -> None:
        raw: dict[str, float] = {}
        if self._average is not None and self.cfg.score_raw:
            score = self.validator(model, self.tokenizer)
            raw = {f"valid_recall@{self.cfg.k}_raw": score}
            if score > self._best_raw:
                self._best_raw, self.best_raw_state = score, copy.deepcopy(model.state_dict())
        with self._averaged_weights(model):
            score = self.validator(model, self.tokenizer)
            self.history.append({"epoch": round(epoch, 3), f"valid_recall@{self.cfg.k}": score,
                                 **getattr(self.validator, "extra", {}), **raw,
                                 "elapsed_s": round(time.perf_counter() - self._t0, 1)})
            if self.best_round < 0 or score > self._score(self.history[self.best_round]):
                self.best_round = len(self.history) - 1
                self.best_state = copy.deepcopy(model.state_dict())
        if self.report is not None:
            best = self.history[self.best_round]
            raw_score = self.history[-1].get(f"valid_recall@{self.cfg.k}_raw")
            also = "" if raw_score is None else f" (raw weights {raw_score:.4f})"
            self.report(f"validation epoch {epoch:.2f}: Recall@{self.cfg.k} {score:.4f}{also} on "
                        f"{len(self.validator.targets)} users (best {self._score(best):.4f} at "
                        f"epoch {best['epoch']:.2f}; {self.history[-1]['elapsed_s']:.0f} s)")

    def _score(self, round_: dict[str, float]) -> float:
        return round_[f"valid_recall@{self.cfg.k}"]

    @contextlib.contextmanager
    def _averaged_weights(self, model: PreTrainedModel) -> Iterator[None]:
        """The model's parameters hold the moving average inside the block (none: as they
        are); the trained weights come back after it."""
        if self._average is None:
            yield
            return
        params = _parameters(model)
        trained = [p.detach().clone() for p in params]
        _copy(params, self._average)
        try:
            yield
        finally:
            _copy(params, trained)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kw: Any) -> None:
        self._t0 = time.perf_counter()
        if self.cfg.average_decay is not None and model is not None:
            from torch.optim.swa_utils import get_ema_multi_avg_fn

            self._average = [p.detach().clone() for p in _parameters(model)]
            self._ema = get_ema_multi_avg_fn(self.cfg.average_decay)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kw: Any) -> Any:
        if self._ema is not None and self._average is not None and model is not None:
            self._ema(self._average, [p.detach() for p in _parameters(model)], None)
        over = ((self.cfg.time_budget_s is not None
                 and time.perf_counter() - self._t0 > self.cfg.time_budget_s)
                or (self._stop_at is not None and self._step(state) >= self._stop_at))
        if state.epoch is not None and (self._epoch(state) + 1e-9 >= self._next or over):
            self._next += self.cfg.every_epochs
            self._round(model, self._epoch(state))
            if self.cfg.fit_schedule and not over:
                self._fit_schedule(args, state, kw.get("lr_scheduler"))
            rounds_since = len(self.history) - 1 - self.best_round
            early = self.cfg.patience is not None and rounds_since >= self.cfg.patience
            if self.fork_share is not None and self._at_fork(args, state, model, kw,
                                                             now=over or early):
                self.stopped_by, control.should_training_stop = "fork", True
            elif over:
                self.stopped_by, control.should_training_stop = "time_budget", True
            elif early:
                self.stopped_by, control.should_training_stop = "early_stopping", True
        return control

    def _epoch(self, state: Any) -> float:
        return self._epoch0 + state.epoch

    def _step(self, state: Any) -> int:
        return int(self._step0 + state.global_step)

    def _at_fork(self, args: Any, state: Any, model: Any, kw: Mapping[str, Any],
                 now: bool = False) -> bool:
        """Whether the trunk has reached its fork: ``fork_share`` of the schedule's epochs
        (the fitted horizon, else the configured one), rounded to a whole epoch, at least one
        and one short of the end, or ``now`` (it would stop anyway: the time budget or
        patience); if so the fork point is kept in :attr:`fork`."""
        scheduler = kw.get("lr_scheduler")
        per_epoch = state.max_steps / args.num_train_epochs
        horizon = _horizon(scheduler) or state.max_steps
        epochs = round(horizon / per_epoch)
        fork_epoch = min(max(round(self.fork_share * epochs), 1), max(epochs - 1, 1))
        epoch = self._epoch(state)
        if epoch + 1e-9 < fork_epoch and not now:
            return False
        self.fork = fork_point(model, kw["optimizer"], scheduler, round(epoch, 3),
                               self._step(state))
        if self.report is not None:
            self.report(f"fork at epoch {epoch:.2f} of {epochs}: the members go on from here")
        return True

    def _fit_schedule(self, args: Any, state: Any, scheduler: Any) -> None:
        """Set the schedule's horizon to the whole epochs the budget holds: the epochs done
        plus the time left over the median epoch so far (validation rounds included), never
        beyond the configured epochs, never before this step. The median, and lengthening
        back, keep one slow epoch (a load burst on a shared machine) from shortening the
        whole run: measured, a burst in epoch 1 had cut a 12-epoch cosine to 6."""
        budget, epoch = self.cfg.time_budget_s, self._epoch(state)
        if budget is None or not state.epoch or not state.max_steps:
            return
        horizon = _horizon(scheduler)
        if horizon is None:
            return
        elapsed = time.perf_counter() - self._t0
        # a branch's rounds count from its fork (its clock started there)
        marks = [(self._epoch0, 0.0)] + [(r["epoch"], r["elapsed_s"]) for r in self.history]
        paces = [(t1 - t0) / (e1 - e0) for (e0, t0), (e1, t1) in itertools.pairwise(marks)
                 if e1 > e0]
        per_epoch = statistics.median(paces) if paces else elapsed / state.epoch
        epochs = max(int(epoch + (budget - elapsed) / per_epoch), round(epoch) + 1)
        last = self._step0 + state.max_steps  # the configured schedule's horizon
        steps = max(int(state.max_steps / args.num_train_epochs * epochs), self._step(state) + 1)
        steps = min(steps, last)
        # a branch starts on the trunk's fitted horizon: it stops there unless refitted
        self._stop_at = steps if steps < last else None
        if steps == horizon:
            return
        _set_horizon(scheduler, steps)
        self.history[-1]["schedule_epochs"] = (epochs if self._stop_at
                                               else self._epoch0 + args.num_train_epochs)
        if self.report is not None:
            self.report(f"schedule fitted to the time budget: {epochs} epochs"
                        if self._stop_at else "schedule back to its configured length")

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None,
                     **kw: Any) -> None:
        if state.epoch is not None and (not self.history or self.history[-1]["epoch"]
                                        != round(self._epoch(state), 3)):
            self._round(model, self._epoch(state))
        if self.best_state is not None and self.fork is None:  # a trunk forks as it stands
            model.load_state_dict(self.best_state)

    def summary(self) -> dict[str, Any]:
        best = self.history[self.best_round] if self.history else {}
        return {"best_epoch": best.get("epoch", 0.0),
                f"best_recall@{self.cfg.k}": self._score(best) if best else -1.0,
                "stopped_by": self.stopped_by, "rounds": self.history,
                "users": len(self.validator.targets)}


def _parameters(model: PreTrainedModel) -> list[torch.Tensor]:
    """The trained parameters (a tied embedding once), in a fixed order."""
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def _copy(into: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    for a, b in zip(into, values, strict=True):
        a.copy_(b)


# The HF schedulers are LambdaLRs over functools.partial(..., num_training_steps=N); the
# horizon is that keyword. Other schedulers have none and are left as they are.
def _horizon(scheduler: Any) -> int | None:
    found = [f.keywords["num_training_steps"] for f in getattr(scheduler, "lr_lambdas", [])
             if isinstance(f, functools.partial) and "num_training_steps" in f.keywords]
    return min(found) if found else None


def _set_horizon(scheduler: Any, steps: int) -> None:
    scheduler.lr_lambdas = [
        functools.partial(f.func, *f.args, **{**f.keywords, "num_training_steps": steps})
        if isinstance(f, functools.partial) and "num_training_steps" in f.keywords else f
        for f in scheduler.lr_lambdas]
