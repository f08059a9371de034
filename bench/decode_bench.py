"""Decoding benchmark: our trie-constrained beam search against HF ``generate(num_beams=B,
prefix_allowed_tokens_fn=…)`` in the same run. One ``name: value`` line per figure.

    python bench/decode_bench.py [--seed 0] [--min-len 32] [--max-len 128] [--quick]

Setup: the demo's tiny Qwen2 (LLMConfig defaults: 3 layers, hidden 192, random init with
embeddings ×4 so the scores are a few nats apart, as a trained model's are); a BPE
tokenizer extended with the S-ID tokens; catalogs of 10,000 and 1,000,000 random S-IDs of
the paper's shape (4 levels × 256 codes + the disambiguation code, as in
``bench/trie_bench.py``); random prompts of ``--min-len``…``--max-len`` token ids.

Timing: by default one torch thread and the process's CPU time (``--clock cpu``), because
this machine's 2 cores are shared with other jobs and wall-clock rates there swing by 5×;
users/s is then per busy core. ``--clock wall --threads N`` on an idle machine.

Lines (``{cat}`` = 10k | 1m):
- ``users_per_s_{cat}_b{B}_batch{n}`` (ours) and ``hf_users_per_s_{cat}_b{B}_batch{n}``
  for B ∈ {8, 20, 50}, batch n ∈ {1, 16, 64}; ours is the best of 2 passes, HF one pass
  (batch 1: 8 users one at a time; otherwise n users in one call);
- ``identical_to_hf``: every HF run returned the same ads per prompt as ours (ties within
  1e-4 may swap places) with log-probabilities within 1e-4; ``hf_max_abs_score_diff``;
- ``speedup_vs_hf_b20_batch16_{cat}`` and ``speedup_vs_hf_b20_batch16`` (the smaller);
- ``speedup_vs_reorder_b20_batch16_{cat}``: against our own generic engine (prompt KV
  expanded to every beam and reordered each level, what the decoder did before);
- ``constraint_overhead_b20_{cat}`` and ``constraint_overhead_b20`` (the larger): time with
  the trie ÷ the same search without it (``beam_search_codes(trie=None)``), batch 16, best
  of 5 interleaved passes each;
- ``prefill_share_b20_batch16``: the prompt prefill's share of our decode time;
- ``clock``, ``threads``, ``wall_s``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trie_bench import random_sids

from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import Hit, beam_search_codes, constrained_beam_search
from leadre_model.llm.model import LLMConfig, build_model
from leadre_model.llm.tokenizer import level_token_ids, train_tokenizer

BEAMS, BATCHES = (8, 20, 50), (1, 16, 64)
SINGLE_USERS = 8  # users decoded one at a time for the batch-1 figures
TOL = 1e-4


def setup(seed: int) -> tuple[Any, Any, dict[str, SidTrie], list[int]]:
    rng = np.random.default_rng(seed)
    catalogs = {"10k": random_sids(10_000, rng), "1m": random_sids(1_000_000, rng)}
    sizes = [256] * 4 + [max(int(c[:, 4].max()) + 1 for c in catalogs.values())]
    corpus = [f"user {i} clicked ad {i % 97}; watched video {i % 13} about cats and dogs"
              for i in range(500)]
    tok = train_tokenizer(corpus, sizes)
    model, _ = build_model(LLMConfig(seed=seed), tok)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(4.0)
    model.eval()
    tries = {name: SidTrie.build(c, np.arange(len(c)), level_sizes=sizes) for name, c in catalogs.items()}
    return model, tok, tries, sizes


def hf_generate(model: Any, tok: Any, prompts: list[list[int]], trie: SidTrie,
                ltok: list[np.ndarray], beam_width: int) -> list[list[tuple[int, float]]]:
    """HF beam search; the constraint walks the trie per beam per step (what open
    re-implementations do). Returns per prompt (row, log-prob) of the finite beams."""
    levels = len(ltok)
    code_of = [{int(t): c for c, t in enumerate(ids)} for ids in ltok]
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
    start = batch["input_ids"].shape[1]

    def allowed(_: int, seq: torch.Tensor) -> list[int]:
        gen = seq[start:].tolist()
        node = np.zeros(1, dtype=np.int64)
        for level, t in enumerate(gen):
            code = code_of[level].get(t)
            if code is None:
                return []
            node = trie.step(level, node, np.array([code]))
        _, codes, _ = trie.valid_next(len(gen), node)
        return ltok[len(gen)][codes].tolist()

    with torch.inference_mode():
        out = model.generate(**batch, num_beams=beam_width, num_return_sequences=beam_width,
                             do_sample=False, max_new_tokens=levels, length_penalty=0.0,
                             prefix_allowed_tokens_fn=allowed, return_dict_in_generate=True,
                             output_scores=True)
    seqs = out.sequences[:, start:].numpy()
    codes = np.stack([np.vectorize(code_of[lv].get, otypes=[np.int64])(seqs[:, lv])
                      for lv in range(levels)], 1) if seqs.size else np.zeros((0, levels), np.int64)
    scores = out.sequences_scores.double().numpy()
    result = []
    for p in range(len(prompts)):
        sl = slice(p * beam_width, (p + 1) * beam_width)
        ok = np.isfinite(scores[sl]) & (scores[sl] > -1e8)
        rows = trie.lookup(codes[sl][ok])
        result.append(list(zip(rows.tolist(), scores[sl][ok].tolist())))
    return result


def same_results(ours: list[list[Hit]], hf: list[list[tuple[int, float]]]) -> tuple[bool, float]:
    """Same ads per prompt in the same order (swaps only between scores within TOL), and
    scores within TOL. Returns (identical, max |score difference|)."""
    ok, worst = True, 0.0
    for a, b in zip(ours, hf, strict=True):
        if len(a) != len(b):
            ok = False
            continue
        hf_score = dict(b)
        if set(hf_score) != {h.row for h in a}:
            ok = False
            continue
        diffs = [abs(h.logprob - hf_score[h.row]) for h in a]
        worst = max(worst, *diffs) if diffs else worst
        ranks_ok = all(abs(h.logprob - s) <= TOL for h, (_, s) in zip(a, b))
        ok &= max(diffs, default=0.0) <= TOL and ranks_ok
    return ok, worst


class Timer:
    def __init__(self, clock: str) -> None:
        self.now = time.process_time if clock == "cpu" else time.perf_counter

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        t = self.now()
        out = fn()
        return self.now() - t, out


def calls(prompts: list[list[int]], batch: int) -> list[list[list[int]]]:
    users = prompts[:SINGLE_USERS] if batch == 1 else prompts[:batch]
    return [users[s:s + batch] for s in range(0, len(users), batch)]


def prefill_seconds(model: Any, tok: Any, prompts: list[list[int]], timed: Timer) -> float:
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
    mask = batch["attention_mask"]
    with torch.inference_mode():
        return timed(lambda: model(input_ids=batch["input_ids"], attention_mask=mask,
                                   position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                                   use_cache=True, logits_to_keep=1))[0]


@dataclass
class Bench:
    model: Any
    tok: Any
    ltok: list[np.ndarray]
    timed: Timer

    def ours(self, work: list[list[list[int]]], trie: SidTrie, beam: int, batch: int) -> list[list[Hit]]:
        return [h for w in work for h in constrained_beam_search(
            self.model, self.tok, w, trie, self.ltok, beam_width=beam, batch_size=batch)]

    def hf(self, work: list[list[list[int]]], trie: SidTrie, beam: int) -> list[list[tuple[int, float]]]:
        return [r for w in work for r in hf_generate(self.model, self.tok, w, trie, self.ltok, beam)]

    def cell(self, prompts: list[list[int]], trie: SidTrie, beam: int,
             batch: int) -> tuple[float, float, bool, float]:
        """(our users/s, HF users/s, identical, max |score diff|) for one grid cell."""
        work = calls(prompts, batch)
        users = sum(map(len, work))
        self.ours(work[:1], trie, beam, batch)  # warm-up
        best, ours = float("inf"), []
        for _ in range(2):
            secs, ours = self.timed(partial(self.ours, work, trie, beam, batch))
            best = min(best, secs)
        hf_secs, hf = self.timed(partial(self.hf, work, trie, beam))
        same, diff = same_results(ours, hf)
        return users / best, users / hf_secs, same, diff

    def overhead(self, work: list[list[int]], trie: SidTrie) -> tuple[float, float]:
        """(reorder-engine seconds, constrained ÷ unconstrained) at B=20."""
        reorder = min(self.timed(partial(constrained_beam_search, self.model, self.tok, work, trie,
                                         self.ltok, beam_width=20, engine="reorder"))[0]
                      for _ in range(2))
        with_trie, without = float("inf"), float("inf")
        for _ in range(5):  # interleaved, so machine load hits both alike
            with_trie = min(with_trie, self.timed(partial(
                beam_search_codes, self.model, self.tok, work, self.ltok, 20, trie=trie))[0])
            without = min(without, self.timed(partial(
                beam_search_codes, self.model, self.tok, work, self.ltok, 20))[0])
        return reorder, with_trie / without


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-len", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="B=20 and batch 16 only (smoke run)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    wall = time.perf_counter()
    torch.set_num_threads(args.threads)
    print(f"clock: {args.clock}")
    print(f"threads: {args.threads}")
    model, tok, tries, sizes = setup(args.seed)
    bench = Bench(model, tok, level_token_ids(tok, sizes), Timer(args.clock))
    rng = np.random.default_rng(args.seed + 1)
    prompts = [rng.integers(2, tok.vocab_size, rng.integers(args.min_len, args.max_len + 1)).tolist()
               for _ in range(max(BATCHES))]
    beams, batches = ((20,), (16,)) if args.quick else (BEAMS, BATCHES)
    rate: dict[str, float] = {}
    identical, worst = True, 0.0
    grid = [(c, b, n) for c in tries for b in beams for n in batches]
    for cat, beam, batch in tqdm(grid, desc="decode bench", file=sys.stderr):
        ours, hf, same, diff = bench.cell(prompts, tries[cat], beam, batch)
        identical, worst = identical and same, max(worst, diff)
        key = f"{cat}_b{beam}_batch{batch}"
        rate[key], rate[f"hf_{key}"] = ours, hf
        print(f"users_per_s_{key}: {ours:.2f}")
        print(f"hf_users_per_s_{key}: {hf:.2f}", flush=True)
    speedups = {c: rate[f"{c}_b20_batch16"] / rate[f"hf_{c}_b20_batch16"] for c in tries}
    for cat, x in speedups.items():
        print(f"speedup_vs_hf_b20_batch16_{cat}: {x:.2f}")
    print(f"identical_to_hf: {str(identical).lower()}")
    print(f"hf_max_abs_score_diff: {worst:.2e}")
    print(f"speedup_vs_hf_b20_batch16: {min(speedups.values()):.2f}")
    work, overheads = prompts[:16], []
    for cat, trie in tries.items():
        reorder_s, overhead = bench.overhead(work, trie)
        overheads.append(overhead)
        print(f"speedup_vs_reorder_b20_batch16_{cat}: {reorder_s * rate[f'{cat}_b20_batch16'] / 16:.2f}")
        print(f"constraint_overhead_b20_{cat}: {overhead:.3f}", flush=True)
    print(f"constraint_overhead_b20: {max(overheads):.3f}")
    prefill = min(prefill_seconds(model, tok, work, bench.timed) for _ in range(3))
    print(f"prefill_share_b20_batch16: {prefill * rate['1m_b20_batch16'] / 16:.2f}")
    print(f"wall_s: {time.perf_counter() - wall:.0f}")


if __name__ == "__main__":
    main()
