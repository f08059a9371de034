"""Table 5 of the paper on a synthetic catalog: collision rate, max collision number and
average codebook usage for several (levels × codebook size). One `name: value` line each.

    python bench/table5_bench.py [--ads 100000] [--epochs 20]

The ad texts are embedded once (cache in .leadre_cache/), then one RQ-VAE is trained per
configuration on the same embeddings. `argmin` is the paper's plain eq. 2 assignment;
`balanced` adds the collision-aware last level the index uses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from leadre_model.data.synth import synth_ad_records
from leadre_model.index.build import build_index
from leadre_model.index.rqvae import RQVAEConfig
from leadre_model.index.sid_index import IndexConfig

CONFIGS = [(3, 256), (3, 512), (3, 1024), (4, 256), (4, 1024)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ads", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(".leadre_cache/bench_embeddings.npz"))
    args = ap.parse_args()
    ads = synth_ad_records(args.ads, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for levels, k in CONFIGS:
            cfg = IndexConfig(rqvae=RQVAEConfig(levels=levels, codebook_size=k, epochs=args.epochs,
                                                batch_size=4096, seed=args.seed))
            t0 = time.perf_counter()
            index = build_index(ads, Path(tmp) / f"i{levels}x{k}", cfg, args.cache, progress=False)
            c = index.stats["collisions"]
            usage = sum(index.stats["codebook_usage"]) / levels
            name = f"{levels}x{k}"
            print(f"collision_rate_argmin_{name}: {c['before_balance']['collision_rate']:.4f}")
            print(f"max_collision_argmin_{name}: {c['before_balance']['max_collision']}")
            print(f"collision_rate_balanced_{name}: {c['after_balance']['collision_rate']:.4f}")
            print(f"max_collision_balanced_{name}: {c['after_balance']['max_collision']}")
            print(f"avg_codebook_usage_{name}: {usage:.4f}")
            print(f"build_s_{name}: {time.perf_counter() - t0:.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
