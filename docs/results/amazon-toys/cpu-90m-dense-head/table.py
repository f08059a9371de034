"""The report's tables from `leadre eval --out` results.json files (later files win on a
retriever name): Recall@K ± its standard error (one target per test user, so Recall@K is a
proportion: se = sqrt(p (1 - p) / n)), NDCG@10, HR@8 ± se, and the same with seen ads masked.

    python docs/results/amazon-toys/cpu-90m-dense-head/table.py RESULTS.json [...]
"""
import json
import math
import sys

rows, n = {}, None
for path in sys.argv[1:]:
    res = json.load(open(path))
    n = res["data"]["test"]
    rows.update(res["retrievers"])


def pm(p: float) -> str:
    return f"{p:.4f} ± {math.sqrt(p * (1 - p) / n):.4f}"


print(f"{n} test users\n")
print("| retriever | Recall@10 | NDCG@10 | Recall@20 | HR@8 | Recall@10, seen masked | Recall@20, seen masked |")
print("|---|---|---|---|---|---|---|")
for name, r in rows.items():
    if name.endswith("+xs"):
        continue
    xs = rows.get(name + "+xs", {})
    cells = [pm(r["recall@10"]), f"{r['ndcg@10']:.4f}",
             pm(r["recall@20"]) if "recall@20" in r else "",
             pm(r["hr@8"]), pm(xs["recall@10"]) if xs else "",
             pm(xs["recall@20"]) if "recall@20" in xs else ""]
    print(f"| {name} | " + " | ".join(cells) + " |")
