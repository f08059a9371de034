"""Index benchmark: one `name: value` line per figure.

    python bench/index_bench.py [--build-ads 100000] [--trie-ads 1000000]

- sid_unique_fraction, collision_rate_before_code (+ the plain-argmin rate) on a 10,000-ad
  synthetic catalog with the default preset for that size;
- index_build_100k_s: embedding + RQ-VAE training + assignment + trie for 100,000 ads
  (cold embedding cache), with the stage split;
- the trie figures for 1,000,000 ads, measured by bench/trie_bench.py in a child process
  so its peak RSS is the trie's alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from leadre_model.config import PRESETS, IndexConfig, preset_for
from leadre_model.data.synth import synth_ad_records
from leadre_model.index.build import build_index


def build(n_ads: int, seed: int, workdir: Path, cache: Path | None) -> tuple[float, dict]:
    """Timed build with a cold embedding cache (it is filled for table5_bench.py to reuse)."""
    ads = synth_ad_records(n_ads, seed)
    cfg = IndexConfig(rqvae=PRESETS[preset_for(n_ads)].model_copy(update={"seed": seed}))
    if cache:
        cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    index = build_index(ads, workdir / f"index_{n_ads}", cfg, cache_path=cache, progress=False)
    return time.perf_counter() - t0, index.stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quality-ads", type=int, default=10_000)
    ap.add_argument("--build-ads", type=int, default=100_000, help="0 skips the build timing")
    ap.add_argument("--trie-ads", type=int, default=1_000_000, help="0 skips the trie figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(".leadre_cache/bench_embeddings.npz"),
                    help="embedding cache of the timed build (emptied first; table5 reuses it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, stats = build(args.quality_ads, args.seed, work, None)
        coll = stats["collisions"]
        import numpy as np

        from leadre_model.index.sid_index import load_index

        idx = load_index(work / f"index_{args.quality_ads}")
        print(f"sid_unique_fraction: {len(np.unique(idx.codes, axis=0)) / len(idx):.6f}")
        print(f"collision_rate_before_code: {coll['after_balance']['collision_rate']:.4f}")
        print(f"collision_rate_argmin: {coll['before_balance']['collision_rate']:.4f}")
        print(f"max_collision_before_code: {coll['after_balance']['max_collision']}")
        print(f"codebook_usage_avg: {np.mean(stats['codebook_usage']):.4f}")
        sys.stdout.flush()
        if args.build_ads:
            secs, stats = build(args.build_ads, args.seed, work, args.cache)
            print(f"index_build_{args.build_ads // 1000}k_s: {secs:.1f}")
            for name, value in stats["timings"].items():
                print(f"index_build_{args.build_ads // 1000}k_{name}: {value:.1f}")
            sys.stdout.flush()
    if args.trie_ads:
        bench = Path(__file__).with_name("trie_bench.py")
        subprocess.run([sys.executable, str(bench), "--n", str(args.trie_ads)], check=True)


if __name__ == "__main__":
    main()
