"""How often each held-out target's ad occurs among training targets, classic split vs refit.

    python docs/results/amazon-toys/refit/target_counts.py WORLD [HOLDOUT_USERS]

One line per set: targets, share whose ad never / at most 2 / at most 5 times is a training
target, median count.
"""
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from leadre_model.data.split import holdout_users, iter_user_histories, leave_one_out

world = Path(sys.argv[1])
hold = holdout_users(world, int(sys.argv[2]) if len(sys.argv) > 2 else 5000)
classic, refit, valid, test = Counter(), Counter(), [], []
for h in iter_user_histories(world, positive_only=True):
    s, r = leave_one_out(h), leave_one_out(h, holdout=hold)
    classic.update(h.behaviors[i].item_id for i in s.train_targets)
    refit.update(h.behaviors[i].item_id for i in r.train_targets)
    valid += [h.behaviors[s.valid].item_id] if s.valid is not None else []
    test += [h.behaviors[s.test].item_id] if s.test is not None else []
for name, targets, counts in (("validation targets, classic", valid, classic),
                              ("test targets, classic", test, classic),
                              ("test targets, refit", test, refit)):
    f = np.array([counts[t] for t in targets])
    print(f"{name}: {len(f)} targets, never {(f == 0).mean():.3f}, <=2 {(f <= 2).mean():.3f}, "
          f"<=5 {(f <= 5).mean():.3f}, median {np.median(f):.0f} "
          f"(training targets {sum(counts.values())})")
