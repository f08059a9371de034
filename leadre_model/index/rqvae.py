"""RQ-VAE of §3.2 (eq. 2-6): encoder → M residual quantisation levels → decoder.

Written here rather than taken from vector-quantize-pytorch's ``ResidualVQ`` because the
paper's objective is a plain gradient codebook loss ``||sg[r]-e||² + β||r-sg[e]||²`` per
level (ResidualVQ defaults to EMA updates and changes defaults between releases), and the
index needs things the library does not expose together: deterministic greedy
assignment for new ads, k-means initialisation on the encoder's own residuals level by
level, dead-code re-seeding from live residuals, and a collision-aware last level.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from leadre_model.configbase import StrictConfig
from leadre_model.index.cpu import FreeCores, torch_threads


class RQVAEConfig(StrictConfig):
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
    """The name of the preset in ``PRESETS`` sized for a catalog of ``n_ads`` ads."""
    if n_ads <= 3_000:
        return "tiny"
    if n_ads <= 30_000:
        return "small"
    if n_ads <= 300_000:
        return "medium"
    return "paper"


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def sq_dist(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, d) × (K, d) → (B, K) squared euclidean distances."""
    return (x * x).sum(1, keepdim=True) - 2 * x @ codebook.T + (codebook * codebook).sum(1)[None]


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means with random-sample seeding; empty clusters get a random point."""
    n = x.shape[0]
    idx = torch.randperm(n, generator=generator)[:k]
    if n < k:  # fewer points than codes: pad with jittered copies
        extra = torch.randint(0, n, (k - n,), generator=generator)
        idx = torch.cat([idx, extra])
    centers = x[idx].clone()
    if n < k:
        centers[n:] += 1e-3 * torch.randn(centers[n:].shape, generator=generator)
    for _ in range(iters):
        assign = sq_dist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centers[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=generator)]
    return centers


class ResidualQuantizer(nn.Module):
    def __init__(self, levels: int, codebook_size: int, dim: int, beta: float) -> None:
        super().__init__()
        self.beta = beta
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.1)

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    def residuals(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy eq. 2-3 without gradients: codes (B, M) and residual inputs (M, B, d)."""
        codes, res = [], []
        r = z
        for level in range(self.levels):
            cb = self.codebooks[level]
            c = sq_dist(r, cb).argmin(1)
            codes.append(c)
            res.append(r)
            r = r - cb[c]
        return torch.stack(codes, 1), torch.stack(res, 0)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return straight-through quantised z (eq. 4), codes (B, M) and L_quant (eq. 6)."""
        r = z
        quant = torch.zeros_like(z)
        loss = z.new_zeros(())
        codes = []
        for level in range(self.levels):
            cb = self.codebooks[level]
            c = sq_dist(r.detach(), cb).argmin(1)
            e = cb[c]
            loss = loss + ((r.detach() - e) ** 2).sum(1).mean()
            loss = loss + self.beta * ((r - e.detach()) ** 2).sum(1).mean()
            quant = quant + e
            r = r - e.detach()
            codes.append(c)
        z_q = z + (quant - z).detach()
        return z_q, torch.stack(codes, 1), loss


class RQVAE(nn.Module):
    def __init__(self, input_dim: int, cfg: RQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.encoder = _mlp([input_dim, *cfg.hidden_dims, cfg.code_dim])
        self.decoder = _mlp([cfg.code_dim, *reversed(cfg.hidden_dims), input_dim])
        self.quantizer = ResidualQuantizer(cfg.levels, cfg.codebook_size, cfg.code_dim, cfg.beta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, codes, l_quant = self.quantizer(self.encoder(x))
        x_hat = self.decoder(z_q)
        l_recon = ((x - x_hat) ** 2).sum(1).mean()  # eq. 5
        return codes, l_recon, l_quant

    @torch.no_grad()
    def encode_codes(self, x: np.ndarray, batch_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Codes (N, M) and the last level's residual inputs (N, d) for assignment."""
        self.eval()
        codes, last = [], []
        for i in range(0, len(x), batch_size):
            c, res = self.quantizer.residuals(self.encoder(torch.from_numpy(x[i : i + batch_size])))
            codes.append(c.numpy())
            last.append(res[-1].numpy())
        return np.concatenate(codes).astype(np.int64), np.concatenate(last)


@dataclass
class TrainLog:
    loss: list[float] = field(default_factory=list)
    recon: list[float] = field(default_factory=list)
    quant: list[float] = field(default_factory=list)
    usage: list[list[float]] = field(default_factory=list)  # per epoch, per level
    reseeded: int = 0
    threads: list[int] = field(default_factory=list)  # torch threads per epoch
    epochs_run: int = 0
    converged_epoch: int | None = None  # 1-based epoch where the early-stop rule fired
    stop_reason: str = ""


def converged(recon: list[float], patience: int, min_delta: float) -> bool:
    """True when the best reconstruction loss of the last ``patience`` epochs is less than
    ``min_delta`` (relative) below the best before them."""
    if patience < 1 or len(recon) <= patience:
        return False
    before, recent = min(recon[:-patience]), min(recon[-patience:])
    return before - recent < min_delta * before


@torch.no_grad()
def _kmeans_init(model: RQVAE, x: torch.Tensor, gen: torch.Generator) -> None:
    sample = x[torch.randperm(len(x), generator=gen)[: 65_536]]
    r = model.encoder(sample)
    for level in range(model.quantizer.levels):
        centers = kmeans(r, model.cfg.codebook_size, model.cfg.kmeans_iters, gen)
        model.quantizer.codebooks.data[level] = centers
        r = r - centers[sq_dist(r, centers).argmin(1)]


@torch.no_grad()
def _reseed_dead_codes(
    model: RQVAE, x: torch.Tensor, counts: torch.Tensor, gen: torch.Generator
) -> int:
    """Move codes used < threshold times onto residuals of random live points."""
    dead = counts < model.cfg.dead_code_threshold
    if not dead.any():
        return 0
    sample = x[torch.randperm(len(x), generator=gen)[: 16_384]]
    _, res = model.quantizer.residuals(model.encoder(sample))
    for level in range(model.quantizer.levels):
        idx = dead[level].nonzero().flatten()
        if len(idx):
            pick = torch.randint(0, len(sample), (len(idx),), generator=gen)
            model.quantizer.codebooks.data[level, idx] = res[level, pick]
    return int(dead.sum())


def train_rqvae(x: np.ndarray, cfg: RQVAEConfig, progress: bool = True) -> tuple[RQVAE, TrainLog]:
    """Train on embeddings ``x`` (N, D) with the paper's loss; deterministic for a seed."""
    if len(x) < 2:
        raise ValueError("need at least 2 ads to train the RQ-VAE")
    threads = FreeCores(cfg.threads)
    with torch_threads(threads()):
        return _train(x, cfg, progress, threads)


def _train(x: np.ndarray, cfg: RQVAEConfig, progress: bool,
           threads: FreeCores) -> tuple[RQVAE, TrainLog]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model = RQVAE(data.shape[1], cfg)
    if cfg.kmeans_iters:
        _kmeans_init(model, data, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log = TrainLog()
    bs = min(cfg.batch_size, len(data))
    # No re-seeding in the last epochs so the final codebooks settle; an early stop keeps
    # those settle epochs after the epoch where the reconstruction loss stopped improving.
    settle = max(1, cfg.epochs // 10)
    end = cfg.epochs
    bar = tqdm(total=cfg.epochs, desc="RQ-VAE", disable=not progress, unit="epoch")
    for epoch in range(cfg.epochs):
        if epoch >= end:
            break
        log.threads.append(threads())  # follows the other processes' load
        torch.set_num_threads(log.threads[-1])
        model.train()
        counts = torch.zeros(cfg.levels, cfg.codebook_size)
        tot = rec = qua = 0.0
        perm = torch.randperm(len(data), generator=gen)
        steps = 0
        for i in range(0, len(data), bs):
            codes, l_recon, l_quant = model(data[perm[i : i + bs]])
            loss = l_recon + l_quant
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for level in range(cfg.levels):
                counts[level] += torch.bincount(codes[:, level], minlength=cfg.codebook_size)
            tot, rec, qua, steps = tot + loss.item(), rec + l_recon.item(), qua + l_quant.item(), steps + 1
        log.loss.append(tot / steps)
        log.recon.append(rec / steps)
        log.quant.append(qua / steps)
        log.usage.append(((counts > 0).float().mean(1)).tolist())
        log.epochs_run = epoch + 1
        if (log.converged_epoch is None
                and converged(log.recon, cfg.early_stop_patience, cfg.early_stop_min_delta)):
            log.converged_epoch = epoch + 1
            end = min(end, epoch + 1 + settle)
        if cfg.dead_code_threshold and epoch < end - settle:
            log.reseeded += _reseed_dead_codes(model, data, counts, gen)
        bar.update()
        bar.set_postfix(loss=f"{log.loss[-1]:.4f}", usage=f"{np.mean(log.usage[-1]):.2f}")
    bar.close()
    if log.epochs_run < cfg.epochs:
        log.stop_reason = (
            f"early stop: reconstruction loss improved < {cfg.early_stop_min_delta:.1%} over "
            f"{cfg.early_stop_patience} epochs at epoch {log.converged_epoch}, then "
            f"{log.epochs_run - log.converged_epoch} settle epochs; {log.epochs_run} of "
            f"{cfg.epochs} epochs")
    elif log.converged_epoch:
        log.stop_reason = (f"all {cfg.epochs} epochs (the loss stopped improving at epoch "
                           f"{log.converged_epoch}, within the last {settle})")
    elif cfg.early_stop_patience:
        log.stop_reason = f"all {cfg.epochs} epochs (the loss still improved)"
    else:
        log.stop_reason = f"all {cfg.epochs} epochs (early stop off)"
    model.eval()
    return model, log
