"""One TRL training stage: the settings SFT and DPO share, and the runner both use.

As TRL's ``SFTConfig`` and ``DPOConfig`` extend one ``TrainingArguments``, the stage configs
of :mod:`leadre_model.train.sft` and :mod:`leadre_model.train.dpo` extend
:class:`StageConfig`, which holds what :func:`run_trainer` passes to every trainer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.configbase import StrictConfig
from leadre_model.device import bf16_supported
from leadre_model.errors import UsageError

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


class StageConfig(StrictConfig):
    """Settings of one trainer run; each subclass sets its own ``epochs`` and ``lr``."""

    epochs: float = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=8, ge=1, description="effective batch = batch_size × grad_accum")
    max_length: int = Field(default=2560, ge=16)
    seed: int = 0
    logging_steps: int = Field(default=10, ge=1)


def run_trainer(
    trainer_cls: type[Trainer],
    config_cls: type[TrainingArguments],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    cfg: StageConfig,
    progress: bool,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **extra: Any,
) -> list[dict[str, float]]:
    """Run one TRL trainer (``SFTTrainer`` or ``DPOTrainer``) with the settings of ``cfg``
    on the device the model is on (``model.to(device)`` first: the CPU, or a CUDA device,
    with bf16 autocast where it has native bf16); ``extra`` goes to the trainer's config,
    ``trainer_kwargs`` to the trainer. Returns the log history entries that carry a loss."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar
    from transformers.trainer_callback import PrinterCallback

    (enable_progress_bar if progress else disable_progress_bar)()
    device = model.device
    cuda = device.type == "cuda"
    if cuda and (device.index or 0) != 0:
        # the HF trainer places a single-GPU run on cuda:0
        raise UsageError(f"training runs on cuda:0; for {device} set "
                         f"CUDA_VISIBLE_DEVICES={device.index} and use --device cuda")
    with tempfile.TemporaryDirectory(prefix="leadre-trl-") as tmp:
        args = config_cls(
            output_dir=tmp,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.max_length,
            logging_steps=cfg.logging_steps,
            save_strategy="no",
            report_to=[],
            use_cpu=not cuda,
            seed=cfg.seed,
            data_seed=cfg.seed,
            # On a GPU, collation in worker processes keeps the host off the critical path.
            dataloader_num_workers=2 if cuda else 0,
            dataloader_pin_memory=cuda,
            disable_tqdm=not progress,
            # TRL turns recomputation on by default; it only costs time at these sizes.
            activation_checkpointing=False,
            # TRL defaults to bf16 autocast; on a CPU without native bf16 (AVX2 only, as
            # here) that is ~8x slower than fp32 (measured: 4.6 s vs 0.54 s per step).
            bf16=bf16_supported(device),
            **extra,
        )
        trainer = trainer_cls(model=model, args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list([dict(r) for r in rows]),
                              **(trainer_kwargs or {}))
        if not progress:
            trainer.remove_callback(PrinterCallback)  # no per-step log dicts
        trainer.train()
        return [h for h in trainer.state.log_history if "loss" in h]
