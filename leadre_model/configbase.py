"""The base of every offline config model.

Each config sits beside the code it configures (``RQVAEConfig`` in ``index/rqvae.py``,
``SFTStageConfig`` in ``train/sft.py``, …); they share only this: unknown keys are an error,
so a typo in a saved config or a preset fails loudly instead of being ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """A pydantic model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")
