"""Run from the repository root: python docs/results/ablations-synthetic-v2/diag/diag.py VARIANT [TEST_USERS]
(variants in variants.json next to this file; writes runs/diag/). Diagnostics for issue 3: which training recipe makes the tiny from-scratch model learn."""
import json, sys, time
from pathlib import Path
from leadre_model.experiments.ablations import AblationConfig
from leadre_model.data.synth import generate_world
from leadre_model.data.store import load_ads
from leadre_model.index.rqvae import PRESETS, preset_for
from leadre_model.index.sid_index import IndexConfig
from leadre_model.eval.harness import EvalConfig, baseline_retrievers, build_eval_data, evaluate
from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever
from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre
from leadre_model.train.sft import SFTStageConfig

out = Path("runs/diag")
cfg = AblationConfig()
world, index_dir = out / "world", out / "index"
if not (world / "world.json").exists():
    generate_world(world, cfg.world, progress=False)
if not (index_dir / "index.json").exists():
    from leadre_model.index.build import build_index
    rq = PRESETS[preset_for(cfg.world.n_ads)].model_copy(update={"seed": cfg.world.seed})
    build_index(load_ads(world), index_dir, IndexConfig(rqvae=rq), progress=False)
ecfg = EvalConfig(max_test_users=int(sys.argv[2]) if len(sys.argv) > 2 else 300, progress=False, dice_drops=())
data = build_eval_data(world, ecfg)
variant = sys.argv[1]
base = TRAIN_PRESETS["experiment"]
if variant == "baselines":
    res = evaluate(world, baseline_retrievers(("popularity", "itemcf", "sasrec_ce")), ecfg, data=data)
else:
    spec = json.loads((Path(__file__).parent / "variants.json").read_text())[variant]
    d = base.model_dump(); 
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict): d[k].update(v)
        else: d[k] = v
    tcfg = type(base).model_validate(d)
    mdir = out / "models" / variant
    t0 = time.perf_counter()
    if not (mdir / "manifest.json").exists():
        summ = train_leadre(world, index_dir, mdir, tcfg, progress=False)
        print("train", variant, round(time.perf_counter() - t0), "s", summ["timings"],
              [(st["stage"], st["history"][-1]["loss"]) for st in summ["sft"]], flush=True)
    r = LeadreRetriever(variant, mdir, index_dir, world, LeadreEvalConfig(progress=False))
    res = evaluate(world, [r], ecfg, data=data)
for name, m in res["retrievers"].items():
    print("RESULT", name, {k: round(v, 4) for k, v in m.items() if k.startswith(("hr@", "ndcg@8", "ecpm", "invalid", "recommend"))}, flush=True)
