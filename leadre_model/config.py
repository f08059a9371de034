"""Configuration of the offline pipeline, in one place.

Each stage has one pydantic model with defaults (TRL-style: one config object per
trainer); `IndexConfig` bundles the index stages and is saved beside every index so a
report can always say how it was made.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from leadre_model.index.text import DEFAULT_TEMPLATE, check_template

DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # resolved to the packaged copy, see embed.py


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextConfig(_Config):
    template: str = DEFAULT_TEMPLATE

    @model_validator(mode="after")
    def _valid(self) -> TextConfig:
        check_template(self.template)
        return self


class EmbedConfig(_Config):
    model: str = Field(
        default=DEFAULT_ENCODER,
        description="'all-MiniLM-L6-v2' (packaged, offline) or a local sentence-transformers path",
    )
    batch_size: int = Field(default=128, ge=1, le=65_536)
    normalize: bool = True
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto = bf16 autocast where the CPU has native bf16 (≈2× faster, cosine "
        "to fp32 > 0.9999), else fp32",
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="torch: the sentence-transformers model in PyTorch; onnx: the same model "
        "exported locally to an fp32 ONNX graph (cached under .leadre_cache/onnx) and run by "
        "ONNX Runtime (cosine to torch fp32 > 0.999999, same S-IDs), opt-in: 0.83× torch "
        "fp32 on an idle 2-core machine, 1.25–1.57× beside another job; auto: torch",
    )
    threads: int = Field(
        default=0, ge=0,
        description="encoder intra-op threads (0: one per core that is idle when the encoder "
        "starts; see leadre_model/index/cpu.py)",
    )

    @model_validator(mode="after")
    def _valid(self) -> EmbedConfig:
        if self.backend == "onnx" and self.precision == "bf16":
            raise ValueError("backend 'onnx' runs the fp32 graph: use precision 'auto' or "
                             "'fp32', or backend 'torch' for bf16")
        return self


class RQVAEConfig(_Config):
    """RQ-VAE of §3.2 (eq. 2-6). Paper defaults: M=4 levels, K=1024 codes, d=8."""

    levels: int = Field(default=4, ge=1, le=8)
    codebook_size: int = Field(default=1024, ge=2, le=65_536)
    code_dim: int = Field(default=8, ge=1, le=512)
    hidden_dims: list[int] = Field(default_factory=lambda: [512, 256, 128])
    beta: float = Field(default=0.25, ge=0, description="commitment weight β_quant of eq. 6")
    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    kmeans_iters: int = Field(default=20, ge=0, description="0 disables k-means initialisation")
    dead_code_threshold: int = Field(
        default=1, ge=0, description="codes used fewer times per epoch are re-seeded (0: never)"
    )
    balance_last_level: bool = Field(
        default=True,
        description="Sinkhorn-balanced assignment at the last level to spread colliding ads",
    )
    early_stop_patience: int = Field(
        default=5, ge=0,
        description="stop once the reconstruction loss has improved by less than "
        "early_stop_min_delta over this many epochs (then the settle epochs, without "
        "re-seeding, still run); 0: always train all epochs",
    )
    early_stop_min_delta: float = Field(
        default=0.01, ge=0, description="relative improvement of the best reconstruction loss"
    )
    threads: int = Field(
        default=0, ge=0, description="torch threads while training (0: one per idle core)"
    )
    seed: int = 0


class CollabConfig(_Config):
    """Collaborative part of the RQ-VAE input (``index/collab.py``); weight 0 = text only."""

    weight: float = Field(
        default=0.0, ge=0, lt=1,
        description="share of the RQ-VAE input's squared norm given to the collaborative "
        "embedding (0: S-IDs from text alone, the paper's setting)",
    )
    dim: int = Field(default=64, ge=2, le=1024, description="SVD rank of the embedding")
    window: int = Field(default=3, ge=1, description="items up to this far apart co-occur")
    shrink: float = Field(
        default=5.0, ge=0,
        description="an ad seen n times takes n/(n+shrink) of its own vector, the rest "
        "predicted from its text",
    )
    ridge: float = Field(default=1.0, gt=0, description="L2 of the text → collaborative map")


class IndexConfig(_Config):
    text: TextConfig = Field(default_factory=TextConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    rqvae: RQVAEConfig = Field(default_factory=RQVAEConfig)
    collab: CollabConfig = Field(default_factory=CollabConfig)


# Codebooks much larger than the catalog leave most codes unused by construction; these
# presets keep ~1-10 ads per last-level code for small catalogs (the paper's K=1024 is
# sized for millions of ads).
PRESETS: dict[str, RQVAEConfig] = {
    "tiny": RQVAEConfig(
        levels=3, codebook_size=32, hidden_dims=[256, 64], epochs=150, batch_size=256
    ),
    "small": RQVAEConfig(
        levels=3, codebook_size=64, hidden_dims=[256, 128], epochs=100, batch_size=512
    ),
    "medium": RQVAEConfig(levels=4, codebook_size=256, epochs=40, batch_size=2048),
    "paper": RQVAEConfig(levels=4, codebook_size=1024, epochs=20, batch_size=4096),
}


def preset_for(n_ads: int) -> str:
    if n_ads <= 3_000:
        return "tiny"
    if n_ads <= 30_000:
        return "small"
    if n_ads <= 300_000:
        return "medium"
    return "paper"
