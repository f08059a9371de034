"""Index benchmark: one `name: value` line per figure.

    python bench/index_bench.py [--build-ads 100000] [--trie-ads 1000000]
                                [--backend auto|torch|onnx] [--speed-sample 2000] [--threads N]

- sid_unique_fraction, collision_rate_before_code (+ the plain-argmin rate) on a 10,000-ad
  synthetic catalog with the default preset for that size;
- encoder throughput on the same ``--speed-sample`` ad texts with each backend in this run
  (torch fp32, torch bf16 where the CPU has native bf16, onnx), timed in the order
  A B B A so drift from other load cancels, and ``onnx_vs_torch_speedup`` (fp32 both);
  ``embed_100k_est_s`` extrapolates the build's backend to 100,000 texts;
- index_build_100k_s: embedding + RQ-VAE training + assignment + trie + save for 100,000
  ads (cold embedding cache), with the stage split, the encoder used and the RQ-VAE epochs;
- the trie figures for 1,000,000 ads, measured by bench/trie_bench.py in a child process
  so its peak RSS is the trie's alone.

`--quality-ads 0`, `--speed-sample 0`, `--build-ads 0`, `--trie-ads 0` skip a part.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leadre_model.data.synth import synth_ad_records
from leadre_model.index.build import build_index
from leadre_model.index.embed import EmbedConfig, TextEmbedder
from leadre_model.index.rqvae import PRESETS, preset_for
from leadre_model.index.sid_index import IndexConfig
from leadre_model.index.text import ad_text


def build(n_ads: int, seed: int, workdir: Path, cache: Path | None,
          embed: EmbedConfig) -> tuple[float, dict]:
    """Timed build with a cold embedding cache (it is filled for table5_bench.py to reuse)."""
    ads = synth_ad_records(n_ads, seed)
    cfg = IndexConfig(embed=embed, rqvae=PRESETS[preset_for(n_ads)].model_copy(update={"seed": seed}))
    if cache:
        cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    index = build_index(ads, workdir / f"index_{n_ads}", cfg, cache_path=cache, progress=False)
    return time.perf_counter() - t0, index.stats


def encoder_speed(n_texts: int, seed: int, threads: int) -> dict[str, float]:
    """texts/s of each backend on the same texts (no cache), ordered A B B A."""
    texts = [ad_text(a) for a in synth_ad_records(n_texts, seed + 1)]
    configs = {"torch_fp32": EmbedConfig(backend="torch", precision="fp32", threads=threads),
               "onnx": EmbedConfig(backend="onnx", threads=threads)}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        configs["torch_bf16"] = EmbedConfig(backend="torch", precision="bf16", threads=threads)
    embedders = {name: TextEmbedder(cfg) for name, cfg in configs.items()}
    for emb in embedders.values():  # load (and export) outside the timing; warm up
        emb.encode(texts[: emb.cfg.batch_size])
    half = len(texts) // 2
    seconds = dict.fromkeys(embedders, 0.0)
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
    for part, order in ((texts[:half], list(embedders)), (texts[half:], list(embedders)[::-1])):
        for name in order:
            t0 = time.perf_counter()
            vectors[name].append(embedders[name].encode(part))
            seconds[name] += time.perf_counter() - t0
    out = {f"encoder_texts_per_s_{name}": len(texts) / s for name, s in seconds.items()}
    a, b = np.concatenate(vectors["torch_fp32"]), np.concatenate(vectors["onnx"])
    out["onnx_vs_torch_min_cosine"] = float(((a * b).sum(1)).min())
    out["onnx_vs_torch_speedup"] = seconds["torch_fp32"] / seconds["onnx"]
    if "torch_bf16" in seconds:
        out["bf16_vs_fp32_speedup"] = seconds["torch_fp32"] / seconds["torch_bf16"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quality-ads", type=int, default=10_000, help="0 skips the quality figures")
    ap.add_argument("--speed-sample", type=int, default=2_000,
                    help="texts per backend for the throughput lines (0 skips them)")
    ap.add_argument("--build-ads", type=int, default=100_000, help="0 skips the build timing")
    ap.add_argument("--trie-ads", type=int, default=1_000_000, help="0 skips the trie figures")
    ap.add_argument("--backend", choices=["auto", "torch", "onnx"], default=EmbedConfig().backend,
                    help="encoder backend of the builds")
    ap.add_argument("--threads", type=int, default=0,
                    help="encoder threads (0: one per core the other processes leave idle)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(".leadre_cache/bench_embeddings.npz"),
                    help="embedding cache of the timed build (emptied first; table5 reuses it)")
    args = ap.parse_args()
    embed = EmbedConfig(backend=args.backend, threads=args.threads)
    emb = TextEmbedder(embed)
    print(f"encoder_backend: {emb.backend}")
    print(f"encoder_precision: {emb.precision}")
    print(f"encoder_threads: {emb.threads}")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.quality_ads:
            _, stats = build(args.quality_ads, args.seed, work, None, embed)
            coll = stats["collisions"]
            from leadre_model.index.sid_index import load_index

            idx = load_index(work / f"index_{args.quality_ads}")
            print(f"sid_unique_fraction: {len(np.unique(idx.codes, axis=0)) / len(idx):.6f}")
            print(f"collision_rate_before_code: {coll['after_balance']['collision_rate']:.4f}")
            print(f"collision_rate_argmin: {coll['before_balance']['collision_rate']:.4f}")
            print(f"max_collision_before_code: {coll['after_balance']['max_collision']}")
            print(f"codebook_usage_avg: {np.mean(stats['codebook_usage']):.4f}")
            sys.stdout.flush()
        if args.speed_sample:
            speed = encoder_speed(args.speed_sample, args.seed, args.threads)
            for name, value in speed.items():
                print(f"{name}: {value:.6f}" if "cosine" in name else f"{name}: {value:.2f}")
            rate = speed["encoder_texts_per_s_" + ("onnx" if emb.backend == "onnx" else
                                                   f"torch_{emb.precision}")]
            print(f"embed_100k_est_s: {100_000 / rate:.1f}")
            sys.stdout.flush()
        if args.build_ads:
            secs, stats = build(args.build_ads, args.seed, work, args.cache, embed)
            name = f"index_build_{args.build_ads // 1000}k"
            print(f"{name}_s: {secs:.1f}")
            for stage, value in stats["timings"].items():
                print(f"{name}_{stage}: {value:.1f}")
            e = stats["embedding"]
            print(f"{name}_embed_load_s: {e['load_s']:.1f}")
            print(f"{name}_embed_encode_s: {e['encode_s']:.1f}")
            print(f"{name}_texts_per_s: {e['encoded'] / max(e['encode_s'], 1e-9):.1f}")
            used = ",".join(f"{n}x{k}" for n, k in sorted(e["threads_used"].items()))
            print(f"{name}_encoder_threads_x_texts: {used}")
            log = stats["train_log"]
            print(f"{name}_rqvae_epochs: {log['epochs_run']}")
            print(f"{name}_rqvae_converged_epoch: {log['converged_epoch']}")
            print(f"{name}_rqvae_mean_threads: {np.mean(log['threads']):.2f}")
            sys.stdout.flush()
    if args.trie_ads:
        bench = Path(__file__).with_name("trie_bench.py")
        subprocess.run([sys.executable, str(bench), "--n", str(args.trie_ads)], check=True)


if __name__ == "__main__":
    main()
