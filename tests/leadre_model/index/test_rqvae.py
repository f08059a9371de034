"""RQ-VAE (eq. 2-6): learns, stays deterministic, and does not collapse its codebooks."""

from __future__ import annotations

import numpy as np
import torch

from leadre_model.index.rqvae import ResidualQuantizer, RQVAEConfig, converged, kmeans, train_rqvae


def clustered(n: int = 2000, k: int = 40, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(k, dim))[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


CFG = RQVAEConfig(levels=3, codebook_size=16, code_dim=8, hidden_dims=[64], epochs=30,
                  batch_size=256)


def test_training_reduces_loss_and_uses_every_code():
    model, log = train_rqvae(clustered(), CFG, progress=False)
    assert log.loss[-1] < 0.7 * log.loss[0]
    codes, last = model.encode_codes(clustered())
    assert codes.shape == (2000, 3) and last.shape == (2000, 8)
    usage = [len(np.unique(codes[:, lv])) / 16 for lv in range(3)]
    assert min(usage) >= 0.9, usage


def test_guards_prevent_collapse_that_happens_without_them():
    # A bad init (all codes in one far corner) collapses without k-means init and dead-code
    # re-seeding; with the guards every level keeps using most of its codes.
    x = clustered(seed=1)
    bare = CFG.model_copy(update={"kmeans_iters": 0, "dead_code_threshold": 0})
    torch.manual_seed(0)
    m_bare, _ = train_rqvae(x, bare, progress=False)
    m_guard, _ = train_rqvae(x, CFG, progress=False)

    def use(m: object) -> float:
        return min(len(np.unique(m.encode_codes(x)[0][:, lv])) for lv in range(3)) / 16

    assert use(m_guard) >= 0.9
    assert use(m_guard) > use(m_bare)


def test_early_stop_on_reconstruction_loss_keeps_the_settle_epochs():
    x = clustered()
    cfg = CFG.model_copy(update={"epochs": 60, "early_stop_patience": 3,
                                 "early_stop_min_delta": 0.02})
    model, log = train_rqvae(x, cfg, progress=False)
    assert log.converged_epoch is not None and log.epochs_run < 60
    assert log.epochs_run == log.converged_epoch + 6  # settle = epochs // 10, no re-seeding
    assert len(log.recon) == log.epochs_run and "early stop" in log.stop_reason
    recent, before = min(log.recon[log.converged_epoch - 3 : log.converged_epoch]), min(
        log.recon[: log.converged_epoch - 3])
    assert before - recent < 0.02 * before  # the rule that fired
    usage = [len(np.unique(model.encode_codes(x)[0][:, lv])) / 16 for lv in range(3)]
    assert min(usage) >= 0.9, usage
    # patience 0 disables the rule: every epoch runs
    _, full = train_rqvae(x, cfg.model_copy(update={"epochs": 8, "early_stop_patience": 0}),
                          progress=False)
    assert full.epochs_run == 8 and full.converged_epoch is None
    assert full.stop_reason == "all 8 epochs (early stop off)"


def test_converged_rule():
    assert not converged([1.0, 0.9, 0.8], patience=3, min_delta=0.01)  # too few epochs
    assert not converged([1.0, 0.9, 0.8, 0.7], patience=3, min_delta=0.01)
    assert converged([1.0, 0.5, 0.499, 0.498, 0.497], patience=3, min_delta=0.01)
    assert not converged([1.0, 0.5, 0.499, 0.498, 0.497], patience=0, min_delta=0.01)


def test_deterministic_for_a_seed():
    x = clustered(500)
    cfg = CFG.model_copy(update={"epochs": 5})
    a, _ = train_rqvae(x, cfg, progress=False)
    b, _ = train_rqvae(x, cfg, progress=False)
    assert (a.encode_codes(x)[0] == b.encode_codes(x)[0]).all()


def test_quantizer_loss_matches_eq6_and_straight_through():
    torch.manual_seed(0)
    q = ResidualQuantizer(levels=2, codebook_size=4, dim=3, beta=0.25)
    z = torch.randn(5, 3, requires_grad=True)
    z_q, codes, loss = q(z)
    # eq. 6 by hand: ||sg[r]-e||^2 + beta ||r-sg[e]||^2 per level (values are equal)
    r, expect = z.detach(), 0.0
    for lv in range(2):
        e = q.codebooks[lv][codes[:, lv]].detach()
        expect += (1 + 0.25) * ((r - e) ** 2).sum(1).mean().item()
        r = r - e
    assert abs(loss.item() - expect) < 1e-5
    z_q.sum().backward()  # straight-through: the gradient reaches the encoder output
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_kmeans_finds_separated_centres():
    gen = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(100, 2) * 0.05 + torch.tensor(c) for c in ([0.0, 0.0], [5.0, 5.0], [-5.0, 5.0])])
    centres = kmeans(pts, 3, 20, gen)
    found = sorted(tuple(round(v) for v in c.tolist()) for c in centres)
    assert found == sorted([(0, 0), (5, 5), (-5, 5)])
