"""TRL's ``SFTTrainer`` with the model's own loss.

TRL 1.x computes the SFT loss through its fused LM head (``fused_lm_head=True``): on a
device without Triton it scores every position of the batch, padding and prompt tokens
included, and also computes each position's entropy and top-1 hit for its logged metrics.
Our vocabulary is small (≈2k tokens) and a ``seq`` row's loss sits on a fraction of its
positions, so that path costs time for nothing on a CPU: on amazon-toys rows of
``cpu-90m-ens``, ``bench/sft_step_bench.py`` measured 0.441 s a step against TRL's 0.477
(1.08 ×, loss difference 2e-6), and 0.12 epoch of the preset took 26.6 s against 30.9 s.
The model's own forward (``Trainer.compute_loss``) computes the same token-mean
cross-entropy, divided by the same ``num_items_in_batch``; TRL's ``entropy`` and
``mean_token_accuracy`` log entries are the only thing lost. The dense head
(llm/dense_head.py) adds its loss to either form.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import is_peft_model
from transformers import Trainer
from trl import SFTTrainer


class ModelLossSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the model's own (``Trainer.compute_loss``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # TRL has set the model's ``forward`` to its fused head, an instance attribute whose
        # closure calls the forward of the model it was added to: a deep copy of this model
        # (a fork's branch, DPO's reference) would run the original's weights whenever it is
        # called without ``fused_lm_head``. Our loss does not use it: back to the class's.
        target = self.model.get_base_model() if is_peft_model(self.model) else self.model
        vars(target).pop("forward", None)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs["use_cache"] = False
        return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
