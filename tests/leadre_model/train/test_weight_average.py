"""Model selection on a moving average of the weights (train/validate.py ``average_decay``):
the validator scores the average, the trained weights are untouched by a round, each round
logs the raw weights' score too, and the end restores the best average."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl

from leadre_model.train.validate import BestOnValidation, ValidationConfig


class _WeightScore:
    """Scores a model by its single weight (so a round shows which weights it saw)."""

    def __init__(self) -> None:
        self.targets = ["t"]
        self.seen: list[float] = []

    def __call__(self, model, tokenizer) -> float:
        self.seen.append(model.weight.item())
        return self.seen[-1]


def _train(decay: float | None, weights: list[float], score_raw: bool = True):
    """Set the model's weight to each value in turn (one optimizer step each), a validation
    round after every step; returns the model and the callback after the stage ends."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    cfg = ValidationConfig(every_epochs=1, patience=100, average_decay=decay, score_raw=score_raw)
    validator = _WeightScore()
    cb = BestOnValidation(validator, cfg, tokenizer=None)
    args, state = SimpleNamespace(num_train_epochs=len(weights)), SimpleNamespace(
        epoch=0.0, global_step=0, max_steps=len(weights))
    cb.on_train_begin(args, state, TrainerControl(), model=model)
    for w in weights:
        with torch.no_grad():
            model.weight.fill_(w)
        state.global_step += 1
        state.epoch = float(state.global_step)
        cb.on_step_end(args, state, TrainerControl(), model=model)
        assert model.weight.item() == w  # a round leaves the trained weights as they were
    cb.on_train_end(args, state, TrainerControl(), model=model)
    return model, cb, validator


def test_rounds_score_and_keep_the_moving_average():
    model, cb, validator = _train(0.5, [4.0, 8.0, -8.0])
    # EMA from 0 with decay 0.5: 2, 5, -1.5; each round scores raw first, then the average
    assert validator.seen == pytest.approx([4.0, 2.0, 8.0, 5.0, -8.0, -1.5])
    assert [r["valid_recall@10"] for r in cb.history] == pytest.approx([2.0, 5.0, -1.5])
    assert [r["valid_recall@10_raw"] for r in cb.history] == pytest.approx([4.0, 8.0, -8.0])
    assert cb.summary()["best_epoch"] == 2.0
    assert model.weight.item() == pytest.approx(5.0)  # the best average, restored
    assert cb.best_raw_state["weight"].item() == pytest.approx(8.0)


def test_without_raw_scores_only_the_average_is_scored():
    model, cb, validator = _train(0.5, [4.0, 8.0, -8.0], score_raw=False)
    assert validator.seen == pytest.approx([2.0, 5.0, -1.5])
    assert "valid_recall@10_raw" not in cb.history[0] and cb.best_raw_state is None
    assert model.weight.item() == pytest.approx(5.0)


def test_without_an_average_the_weights_themselves_are_selected():
    model, cb, validator = _train(None, [4.0, 8.0, -8.0])
    assert validator.seen == [4.0, 8.0, -8.0]
    assert "valid_recall@10_raw" not in cb.history[0]
    assert model.weight.item() == 8.0 and cb.best_raw_state is None


def test_the_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="average_decay"):
        ValidationConfig(average_decay=1.0)
