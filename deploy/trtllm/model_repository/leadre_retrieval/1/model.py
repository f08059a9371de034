"""`leadre_retrieval` on a TensorRT-LLM engine: Triton Python backend, GPU.

NOT exercised in CI (no GPU there). Written against tensorrt_llm 0.18's executor bindings
(logits post-processor callback ``(req_id, logits, ids, stream_ptr, client_id)``); needs
this repository pip-installed in the Triton container for the trie, tokenizer, request
parsing and response packing shared with the CPU service.

Differences from the CPU service (services/inference), said plainly:
* TensorRT-LLM applies the post-processor to the logits *before* its beam-search softmax,
  so each level's scores are normalised over the trie's valid children, not over the full
  vocabulary as in training and on CPU. Rankings among one beam's children agree; across
  beams they can differ where the model puts mass outside the valid set.
* Catalog events and hot swaps are not applied here: a new version is a new model
  repository (Triton's model control API loads it), and paused ads are removed by
  publishing a version (or by extending ``TrieConstraint`` with the Redis tail).
* Advertiser priors come from the returned ads' probability mass only.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt_llm.bindings.executor as trtllm
import torch
import triton_python_backend_utils as pb_utils

from leadre_model.index.sid_index import load_index
from leadre_model.index.trie import SidTrie
from leadre_model.llm.model import load_tokenizer, sid_level_sizes
from leadre_model.llm.tokenizer import level_token_ids
from services.common.contracts import (
    IN_ADV_PROMPT,
    IN_BEAM,
    IN_PROMPT,
    IN_PROMPT_IDS,
    IN_TOPK,
    RetrievedAd,
)
from services.inference.bundle import Result, ad_mass_priors
from services.inference.registry import check_model_matches_index, read_advertisers
from services.inference.tensors import BadRequest, Row, pack_response, parse_request

PROCESSOR = "leadre_trie"
TIMEOUT = datetime.timedelta(seconds=60)


class TrieConstraint:
    """Logits post-processor: every beam may only continue with its trie node's active
    children (all other logits += -inf); after the last level only end-of-sequence."""

    def __init__(self, trie: SidTrie, level_ids: list[np.ndarray], vocab: int, end_id: int) -> None:
        self.trie, self.level_ids, self.vocab, self.end_id = trie, level_ids, vocab, end_id
        self.code_of = [dict(zip(ids.tolist(), range(len(ids)))) for ids in level_ids]
        self.prompt_len: dict[int, int] = {}  # client id → prompt length (set before enqueue)
        self.lock = threading.Lock()

    def __call__(self, req_id: int, logits: torch.Tensor, ids: list[list[int]], stream_ptr: int,
                 client_id: int | None = None) -> None:
        start = self.prompt_len[int(client_id)]  # type: ignore[arg-type]
        level = len(ids[0]) - start
        nodes = np.zeros(len(ids), dtype=np.int64)
        with self.lock:  # the trie is shared with every request in flight
            for lv in range(min(level, self.trie.num_levels)):
                codes = np.array([self.code_of[lv].get(b[start + lv], -1) for b in ids])
                nodes = self.trie.step(lv, nodes, codes)
            mask = np.full((len(ids), self.vocab), -np.inf, dtype=np.float32)
            if level < self.trie.num_levels:
                rows, codes = np.nonzero(self.trie.valid_mask(level, nodes))
                mask[rows, self.level_ids[level][codes]] = 0.0
            else:
                mask[:, self.end_id] = 0.0
        with torch.cuda.stream(torch.cuda.ExternalStream(stream_ptr)):
            logits += torch.from_numpy(mask).to(logits.device, non_blocking=True).view_as(logits)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        vdir = Path(params["version_dir"])
        index = load_index(vdir / "index")
        check_model_matches_index(vdir / "model", index)  # refuse a model of another index
        self.tokenizer = load_tokenizer(vdir / "model")
        sizes = sid_level_sizes(self.tokenizer)[:index.codes.shape[1]]
        trie = SidTrie.build(index.codes, np.arange(len(index)), index.active, level_sizes=sizes)
        self.ad_ids, self.version, self.levels = index.ad_ids, vdir.name, len(sizes)
        adv = read_advertisers(vdir, index.level_sizes[0])
        self.advertiser_of = {} if adv is None else adv[1]
        self.max_beam = int(params.get("max_beam_width", "50"))
        end_id = self.tokenizer.eos_token_id
        self.constraint = TrieConstraint(trie, level_token_ids(self.tokenizer, sizes),
                                         len(self.tokenizer), end_id)
        config = trtllm.ExecutorConfig(self.max_beam)
        config.logits_post_processor_config = trtllm.LogitsPostProcessorConfig(
            processor_map={PROCESSOR: self.constraint})
        self.executor = trtllm.Executor(Path(params["engine_dir"]), trtllm.ModelType.DECODER_ONLY, config)
        self.client_ids = itertools.count()
        self.end_id, self.pad_id = end_id, self.tokenizer.pad_token_id

    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:  # per-request errors: one bad request fails only itself
            try:
                data = {name: t.as_numpy() for name in (IN_PROMPT, IN_PROMPT_IDS, IN_BEAM, IN_TOPK,
                                                        IN_ADV_PROMPT)
                        if (t := pb_utils.get_input_tensor_by_name(request, name)) is not None}
                rows = parse_request(data, self.max_beam)
                packed = pack_response(self._decode(rows), max(r.top_k for r in rows), self.version)
                out.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(k, v) for k, v in packed.items()]))
            except (BadRequest, ValueError, RuntimeError) as exc:
                out.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return out

    def _decode(self, rows: list[Row]) -> list[Result]:
        pending: dict[int, tuple[int, int]] = {}  # executor request id → (row, client id)
        for i, row in enumerate(rows):
            ids = (self.tokenizer(row.prompt)["input_ids"] if isinstance(row.prompt, str)
                   else list(row.prompt))
            if not ids or max(ids) >= len(self.tokenizer):
                raise BadRequest(f"prompt of row {i} is empty or has unknown token ids")
            cid = next(self.client_ids)
            self.constraint.prompt_len[cid] = len(ids)
            req = trtllm.Request(input_token_ids=ids, max_tokens=self.levels, end_id=self.end_id,
                                 pad_id=self.pad_id, client_id=cid,
                                 sampling_config=trtllm.SamplingConfig(beam_width=row.beam_width),
                                 output_config=trtllm.OutputConfig(return_log_probs=True,
                                                                   exclude_input_from_output=True))
            req.logits_post_processor_name = PROCESSOR
            pending[self.executor.enqueue_request(req)] = (i, cid)
        results: list[Result | None] = [None] * len(rows)
        for req_id, (i, cid) in pending.items():
            responses = self.executor.await_responses(req_id, TIMEOUT)
            self.constraint.prompt_len.pop(cid, None)
            final = [r for r in responses if not r.has_error() and r.result.is_final]
            if len(final) != 1:
                errors = [r.error_msg for r in responses if r.has_error()]
                raise RuntimeError(f"row {i}: {errors[0] if errors else 'no final result in time'}")
            results[i] = self._result(final[0].result, rows[i].top_k)
        return results  # type: ignore[return-value]

    def _result(self, result: Any, top_k: int) -> Result:
        beams = [list(t)[:self.levels] for t in result.output_token_ids]
        codes = np.array([[self.constraint.code_of[lv].get(t, -1) for lv, t in enumerate(b)]
                          for b in beams if len(b) == self.levels]).reshape(-1, self.levels)
        scores = np.asarray(result.cum_log_probs, dtype=np.float64)[:len(codes)]
        with self.constraint.lock:
            rows = self.constraint.trie.lookup(codes) if len(codes) else np.zeros(0, np.int64)
        order = [j for j in np.argsort(-scores, kind="stable") if rows[j] >= 0][:top_k]
        ads = [RetrievedAd(ad_id=self.ad_ids[rows[j]], score=float(scores[j])) for j in order]
        return Result(ads, ad_mass_priors(ads, self.advertiser_of, top_k))

    def finalize(self) -> None:
        self.executor.shutdown()
