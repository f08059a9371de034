"""Decoding benchmark: our trie-constrained beam search against HF ``generate(num_beams=B,
prefix_allowed_tokens_fn=…)`` in the same run. One ``name: value`` line per figure.

    python bench/decode_bench.py [--seed 0] [--min-len 32] [--max-len 128] [--quick]
                                 [--device cpu|cuda|auto] [--model default|cpu-90m]

Setup: a tiny Qwen2 (``--model default``: LLMConfig defaults, 3 layers × 192; ``cpu-90m``:
the cpu-90m preset's 4 × 192, the default on a GPU), random init with
embeddings ×4 so the scores are a few nats apart, as a trained model's are; a BPE
tokenizer extended with the S-ID tokens; catalogs of 10,000 and 1,000,000 random S-IDs of
the paper's shape (4 levels × 256 codes + the disambiguation code, as in
``bench/trie_bench.py``); random prompts of ``--min-len``…``--max-len`` token ids.

Timing: by default one torch thread and the process's CPU time (``--clock cpu``), because
this machine's 2 cores are shared with other jobs and wall-clock rates there swing by 5×;
users/s is then per busy core. ``--clock wall --threads N`` on an idle machine.

On a GPU (``--device cuda``) the clock is the wall clock with the device synchronised, the
grid is B ∈ {20, 50} × batch ∈ {64, 256, 1024}, HF ``generate`` runs at batch 64 only (its
per-beam Python callback makes larger batches minutes long), and two more lines compare
with the CPU: ``identical_to_cpu`` (the same ads and log-probabilities within 1e-4 as the
same model decoding on the CPU, 64 users at B=20 on each catalog) and
``cpu_max_abs_score_diff``. The speedup lines then read ``..._b20_batch64``.

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
import copy
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


MODELS = {"default": LLMConfig(), "cpu-90m": LLMConfig(hidden_size=192, intermediate_size=576,
                                                     num_layers=4, max_positions=1024)}


def setup(seed: int, model_name: str = "default",
          device: torch.device | None = None) -> tuple[Any, Any, dict[str, SidTrie], list[int]]:
    rng = np.random.default_rng(seed)
    catalogs = {"10k": random_sids(10_000, rng), "1m": random_sids(1_000_000, rng)}
    sizes = [256] * 4 + [max(int(c[:, 4].max()) + 1 for c in catalogs.values())]
    corpus = [f"user {i} clicked ad {i % 97}; watched video {i % 13} about cats and dogs"
              for i in range(500)]
    tok = train_tokenizer(corpus, sizes)
    model, _ = build_model(MODELS[model_name].model_copy(update={"seed": seed}), tok)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(4.0)
    model.eval().to(device or torch.device("cpu"))
    tries = {name: SidTrie.build(c, np.arange(len(c)), level_sizes=sizes) for name, c in catalogs.items()}
    return model, tok, tries, sizes


def hf_generate(model: Any, tok: Any, prompts: list[list[int]], trie: SidTrie,
                ltok: list[np.ndarray], beam_width: int) -> list[list[tuple[int, float]]]:
    """HF beam search; the constraint walks the trie per beam per step (what open
    re-implementations do). Returns per prompt (row, log-prob) of the finite beams."""
    levels = len(ltok)
    code_of = [{int(t): c for c, t in enumerate(ids)} for ids in ltok]
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
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
    seqs = out.sequences[:, start:].cpu().numpy()
    codes = np.stack([np.vectorize(code_of[lv].get, otypes=[np.int64])(seqs[:, lv])
                      for lv in range(levels)], 1) if seqs.size else np.zeros((0, levels), np.int64)
    scores = out.sequences_scores.double().cpu().numpy()
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
    """CPU time or wall time; on a GPU, wall time with the device synchronised."""

    def __init__(self, clock: str, device: torch.device | None = None) -> None:
        self.now = time.process_time if clock == "cpu" else time.perf_counter
        self.cuda = device is not None and device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            torch.cuda.synchronize()
        t = self.now()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return self.now() - t, out


def calls(prompts: list[list[int]], batch: int) -> list[list[list[int]]]:
    users = prompts[:SINGLE_USERS] if batch == 1 else prompts[:batch]
    return [users[s:s + batch] for s in range(0, len(users), batch)]


def prefill_seconds(model: Any, tok: Any, prompts: list[list[int]], timed: Timer) -> float:
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
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
             batch: int, with_hf: bool = True) -> tuple[float, float | None, bool, float]:
        """(our users/s, HF users/s, identical, max |score diff|) for one grid cell."""
        work = calls(prompts, batch)
        users = sum(map(len, work))
        self.ours(work[:1], trie, beam, batch)  # warm-up
        best, ours = float("inf"), []
        for _ in range(2):
            secs, ours = self.timed(partial(self.ours, work, trie, beam, batch))
            best = min(best, secs)
        if not with_hf:
            return users / best, None, True, 0.0
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


def identical_to_cpu(bench: Bench, prompts: list[list[int]],
                     tries: dict[str, SidTrie]) -> tuple[bool, float]:
    """The GPU decoder against the same weights decoding on the CPU (B=20, 64 users)."""
    cpu_model = copy.deepcopy(bench.model).to("cpu").float()
    cpu = Bench(cpu_model, bench.tok, bench.ltok, bench.timed)
    ok, worst = True, 0.0
    for trie in tries.values():
        work = [prompts[:64]]
        a, b = bench.ours(work, trie, 20, 64), cpu.ours(work, trie, 20, 64)
        same, diff = same_results(a, [[(h.row, h.logprob) for h in hs] for hs in b])
        ok, worst = ok and same, max(worst, diff)
    return ok, worst


def main() -> None:
    from leadre_model.device import describe, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-len", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="B=20 and one batch size only (smoke run)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--model", choices=sorted(MODELS), default=None,
                    help="model size (default: 'default' on a CPU, 'cpu-90m' on a GPU)")
    args = ap.parse_args()
    wall = time.perf_counter()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    model_name = args.model or ("cpu-90m" if gpu else "default")
    clock = "wall" if gpu else args.clock
    torch.set_num_threads(args.threads)
    print(f"device: {describe(device)}")
    print(f"model: {model_name}")
    print(f"clock: {clock}")
    print(f"threads: {args.threads}")
    model, tok, tries, sizes = setup(args.seed, model_name, device)
    bench = Bench(model, tok, level_token_ids(tok, sizes), Timer(clock, device))
    beams, batches = ((20, 50), (64, 256, 1024)) if gpu else (BEAMS, BATCHES)
    ref = 64 if gpu else 16  # the batch of the speedup and overhead lines
    if args.quick:
        beams, batches = (20,), (ref,)
    rng = np.random.default_rng(args.seed + 1)
    prompts = [rng.integers(2, tok.vocab_size, rng.integers(args.min_len, args.max_len + 1)).tolist()
               for _ in range(max(batches))]
    rate: dict[str, float] = {}
    identical, worst = True, 0.0
    grid = [(c, b, n) for c in tries for b in beams for n in batches]
    for cat, beam, batch in tqdm(grid, desc="decode bench", file=sys.stderr):
        with_hf = not gpu or batch == ref
        ours, hf, same, diff = bench.cell(prompts, tries[cat], beam, batch, with_hf)
        identical, worst = identical and same, max(worst, diff)
        key = f"{cat}_b{beam}_batch{batch}"
        rate[key] = ours
        print(f"users_per_s_{key}: {ours:.2f}")
        if hf is not None:
            rate[f"hf_{key}"] = hf
            print(f"hf_users_per_s_{key}: {hf:.2f}", flush=True)
    speedups = {c: rate[f"{c}_b20_batch{ref}"] / rate[f"hf_{c}_b20_batch{ref}"] for c in tries}
    for cat, x in speedups.items():
        print(f"speedup_vs_hf_b20_batch{ref}_{cat}: {x:.2f}")
    print(f"identical_to_hf: {str(identical).lower()}")
    print(f"hf_max_abs_score_diff: {worst:.2e}")
    print(f"speedup_vs_hf_b20_batch{ref}: {min(speedups.values()):.2f}")
    if gpu:
        same_cpu, cpu_diff = identical_to_cpu(bench, prompts, tries)
        print(f"identical_to_cpu: {str(same_cpu).lower()}")
        print(f"cpu_max_abs_score_diff: {cpu_diff:.2e}")
    work, overheads = prompts[:ref], []
    for cat, trie in tries.items():
        reorder_s, overhead = bench.overhead(work, trie)
        overheads.append(overhead)
        print(f"speedup_vs_reorder_b20_batch{ref}_{cat}: "
              f"{reorder_s * rate[f'{cat}_b20_batch{ref}'] / ref:.2f}")
        print(f"constraint_overhead_b20_{cat}: {overhead:.3f}", flush=True)
    print(f"constraint_overhead_b20: {max(overheads):.3f}")
    prefill = min(prefill_seconds(model, tok, work, bench.timed) for _ in range(3))
    print(f"prefill_share_b20_batch{ref}: {prefill * rate[f'1m_b20_batch{ref}'] / ref:.2f}")
    print(f"wall_s: {time.perf_counter() - wall:.0f}")


if __name__ == "__main__":
    main()
