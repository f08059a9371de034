"""Probe: do test-time ensembles of one trained model lift LEADRE's dense Recall@10?

    python docs/results/amazon-toys/cpu-90m-tied-nosummary/test-time-ensembles/probe.py WORLD INDEX MODEL [PASSES] [MC_PASSES]

The `seq` stage trains with dropout 0.3 (attention and input embeddings) and with 20 % of a
row's ads deleted per batch (train/augment.py), but retrieval scores one deterministic pass
over the whole history. Two ensembles of the same weights, each a mean of softmaxes over
all ads:
  * mc-dropout: the model in training mode (dropout on) under no_grad, MC_PASSES draws
                (default 0: off; a pass in training mode took over 2 min for 5,000
                prompts on 2 cores, against ≈ 20 s in eval mode);
  * deletion:   eval mode, PASSES views with every history ad deleted with chance 0.2
                (the training augmentation; never the prompt's trailing marker), plus
                the full view.
Same 5,000 users as `leadre eval --max-test-users 5000`; validation = each user's
second-to-last target from the history before it. Recall@10 with and without the user's
seen ads masked; se = binomial standard error of each figure. Output: probe_output.txt.
"""
import random
import sys
from pathlib import Path

import numpy as np
import torch

from leadre_model.eval.harness import EvalConfig, build_eval_data
from leadre_model.eval.metrics import recall_at_k
from leadre_model.llm.decode import encode_prompts
from leadre_model.llm.dense_head import dense_head_of, prompt_scores
from leadre_model.llm.retriever import SidRetriever
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.augment import AdDeletionCollator

world, index_dir, model_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
passes = int(sys.argv[4]) if len(sys.argv) > 4 else 8
mc_passes = int(sys.argv[5]) if len(sys.argv) > 5 else 0
torch.manual_seed(0)
rng = random.Random(0)
data = build_eval_data(world, EvalConfig(max_test_users=5000, progress=False))
users = [c.user.user_id for c in data.test_cases]
pos = {u: i for i, u in enumerate(users)}
n_items = len(data.ad_ids)
hists = {"valid": [h[:-1] for h in data.test_histories], "test": list(data.test_histories)}
targets = {"valid": [h[-1] for h in data.test_histories], "test": list(data.test_targets)}

sid = SidRetriever.from_dirs(model_dir, index_dir)
assert sid.manifest is not None
model, head = sid.model, dense_head_of(sid.model)
assert head is not None
cut = AdDeletionCollator.for_tokenizer(None, sid.tokenizer, 0.2)
to_eval = np.array([data.index.get(a, -1) for a in sid.index.ad_ids])
ok = (to_eval >= 0) & (torch.as_tensor(sid.index.active) & head.fits.cpu()).numpy()


def probs(ids: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(prompt_scores(model, head, ids).float(), 1)


def delete(ids: list[int]) -> list[int]:
    spans = cut.spans(ids)[:-1]  # the last span is the prompt's trailing <|ad|> marker
    gone = {j for s, e in spans if rng.random() < 0.2 for j in range(s, e)}
    return [t for j, t in enumerate(ids) if j not in gone]


def report(name: str, split: str, p: torch.Tensor, order: np.ndarray) -> None:
    full = np.full((len(users), n_items), -np.inf, dtype=np.float32)
    full[np.ix_(order, to_eval[ok])] = torch.log(p.clamp_min(1e-30)).numpy()[:, ok]
    tgt = np.asarray(targets[split])
    out = []
    for masked in (False, True):
        s = full.copy()
        if masked:
            for i, h in enumerate(hists[split]):
                s[i, h] = -np.inf
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        r = recall_at_k(top, tgt, 10)
        out.append(f"{'masked' if masked else 'all'} {r:.4f} ± {np.sqrt(r * (1 - r) / len(tgt)):.4f}")
    print(f"{name}\t{split}\t" + "\t".join(out), flush=True)


for split in ("valid", "test"):
    samples = build_samples(world, sid.index, sid.manifest.prompt_config, ["main"], split,
                            users=users)
    order = np.array([pos[x["user_id"]] for x in samples])
    ids = [list(x) for x in encode_prompts(sid.tokenizer, [x["prompt"] for x in samples])]
    model.eval()
    base = probs(ids)
    report("single pass (as served)", split, base, order)
    if mc_passes:
        model.train()
        mc = sum(probs(ids) for _ in range(mc_passes)) / mc_passes
        model.eval()
        report(f"mc-dropout x{mc_passes}", split, mc, order)
        report(f"mc-dropout x{mc_passes} + single pass", split,
               (mc * mc_passes + base) / (mc_passes + 1), order)
    total = base.clone()
    for n in range(1, passes + 1):  # one mean, reported at 1, 2, 4, 8, ... views
        total += probs([delete(x) for x in ids])
        if n & (n - 1) == 0 or n == passes:
            report(f"deletion 0.2 x{n} + full view", split, total / (n + 1), order)
