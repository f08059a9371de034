from pathlib import Path
import numpy as np
from leadre_model.eval.harness import EvalConfig, build_eval_data
d = build_eval_data(Path("runs/diag/world"), EvalConfig(max_test_users=300, progress=False, dice_drops=()))
rep = np.mean([t in set(h) for h, t in zip(d.test_histories, d.test_targets)])
rep5 = np.mean([t in set(h[-5:]) for h, t in zip(d.test_histories, d.test_targets)])
last = np.mean([len(h) and t == h[-1] for h, t in zip(d.test_histories, d.test_targets)])
print("target in history", rep, "in last5", rep5, "== last", last, "mean hist len", np.mean([len(h) for h in d.test_histories]))
print("train seqs", len(d.train_sequences), "mean len", np.mean([len(s) for s in d.train_sequences]))
cat_same = np.mean([len(h) and d.category[t] == d.category[h[-1]] for h, t in zip(d.test_histories, d.test_targets)])
print("same category as last ad", cat_same)
