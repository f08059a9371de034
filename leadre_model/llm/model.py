"""The causal LM that generates S-IDs: a tiny Qwen2 built from scratch or any local Hugging
Face checkpoint, its vocabulary extended with the S-ID and soft-prompt tokens; saved in
safetensors beside a manifest that ties it to one S-ID index.

The soft-prompt token ``<|leadre_soft|>`` (§4.2.1's learnable task token) is an ordinary
row of the input embedding matrix, so it trains with the rest of the model; with
``trainable="new_tokens"`` only the rows of the added tokens (S-IDs, advertisers, soft
prompt) get gradients — the cheap option for large checkpoints (LoRA adapters through PEFT
stack on top of that later; PEFT is not a dependency yet).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from leadre_model.configbase import StrictConfig
from leadre_model.data.store import atomic_dir
from leadre_model.errors import BadInputError, UsageError
from leadre_model.index.sids import LEVEL_PREFIXES, SID_TOKEN
from leadre_model.llm.manifest import FORMAT, FORMAT_VERSION, MANIFEST, Manifest, read_manifest
from leadre_model.llm.tokenizer import SOFT_TOKEN, extend_tokenizer, tokenizer_hash

_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


class LoraSettings(StrictConfig):
    """PEFT LoRA for large checkpoints: low-rank adapters on the attention and MLP
    projections; the added tokens' embedding rows train in full (PEFT's
    ``trainable_token_indices``). Merged into the base weights when saved, so serving
    loads one plain safetensors model."""

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class DenseHeadSettings(StrictConfig):
    """The dense head's settings (llm/dense_head.py)."""

    weight: float = Field(default=1.0, gt=0, description="the dense loss of a target counts "
                          "as this many S-ID tokens' loss")
    id_table: bool = Field(default=True, description="a trained vector per ad of the training "
                           "index beside its code vectors (new ads: codes only)")
    rerank: Literal["off", "dense", "mix", "full", "fuse"] = Field(
        default="mix", description="how retrieval uses the head (llm/dense_head.py)")
    fuse_candidates: int = Field(default=50, ge=1, description="rerank 'fuse': the dense "
                                 "head's top this many ads are scored by the S-ID head too")
    # 0.1: the best of 0-2 on amazon-toys validation (docs/results/amazon-toys/head-fusion);
    # at 1 the weaker S-ID head pulls the list down (0.0814 vs 0.0848 unfused)
    fuse_weight: float = Field(default=0.1, gt=0, description="rerank 'fuse': rank by dense "
                               "log-softmax + this × S-ID log-probability")
    id_input: bool = Field(default=False, description="also add each prompt ad's id vector "
                           "(the same table the head scores with, tied as in SASRec) at the "
                           "last token of its S-ID; needs id_table")
    id_init: Literal["random", "collab"] = Field(
        default="random", description="start of the ad-id table: small random vectors, or "
        "the item-CF embedding of the training sequences (SVD of their co-occurrence, text "
        "prediction for rare ads; index/collab.py) at the same norm")
    text_output: bool = Field(default=False, description="each ad's vector also gets its "
                              "frozen text embedding through the model's item-text map (the "
                              "map of the input, tied as the ids are; llm/item_text.py): ads "
                              "that share codes differ by their text, new ads included; "
                              "needs llm.item_text")

    @model_validator(mode="after")
    def _id_input_needs_ids(self) -> DenseHeadSettings:
        if self.id_input and not self.id_table:
            raise ValueError("dense_head.id_input needs id_table (the vectors it adds)")
        if self.id_init == "collab" and not self.id_table:
            raise ValueError("dense_head.id_init 'collab' needs id_table (the vectors it sets)")
        return self


class LLMConfig(StrictConfig):
    """Which LM to build. ``base="tiny"``: the embedded Qwen2 below, random init (seeded);
    otherwise a local checkpoint directory (never downloaded)."""

    base: str = Field(default="tiny", description="'tiny' or a local HF causal-LM checkpoint path")
    hidden_size: int = Field(default=192, ge=16)
    intermediate_size: int = Field(default=512, ge=16)
    num_layers: int = Field(default=3, ge=1)
    num_heads: int = Field(default=4, ge=1)
    num_kv_heads: int = Field(default=2, ge=1, description="< num_heads: grouped-query attention")
    max_positions: int = Field(default=2560, ge=64)
    rope_theta: float = Field(default=10_000.0, gt=0)
    tie_embeddings: bool = True
    seed: int = 0
    trainable: Literal["all", "new_tokens"] = Field(
        default="all", description="new_tokens: only the added tokens' embedding rows train")
    dtype: Literal["float32", "bfloat16"] = "float32"
    sid_init: Literal["default", "codebook"] = Field(
        default="default", description="codebook: S-ID token rows start as the RQ-VAE "
        "codebook vectors of their code (a seeded random projection to the model width)")
    lora: LoraSettings | None = Field(default=None, description="PEFT LoRA (checkpoint bases)")
    item_text: bool = Field(default=False, description="each ad of a prompt also gets its "
                            "frozen MiniLM text embedding, mapped to the model width, added at "
                            "its last S-ID token (llm/item_text.py)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="training-time dropout on the "
                           "input embeddings and attention weights (Qwen2 has no hidden "
                           "dropout; SASRec's strong regulariser on small data)")
    hidden_dropout: float = Field(default=0.0, ge=0, lt=1, description="training-time dropout "
                                  "on every block's attention and MLP outputs before they join "
                                  "the residual stream (GPT-2's resid_pdrop; SASRec drops out "
                                  "inside every block, Qwen2 has none of its own)")
    dense_head: DenseHeadSettings | None = Field(
        default=None, description="a dense retrieval head beside the S-ID head, trained with "
        "full-softmax CE over all ads, used at retrieval (llm/dense_head.py)")

    @model_validator(mode="after")
    def _heads(self) -> LLMConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")
        if self.dense_head is not None and self.lora is not None:
            raise ValueError("dense_head with LoRA is not supported (the head would not be merged)")
        if self.item_text and self.lora is not None:
            raise ValueError("item_text with LoRA is not supported (the map would not be merged)")
        if self.dense_head is not None and self.dense_head.text_output and not self.item_text:
            raise ValueError("dense_head.text_output needs item_text (the map it shares)")
        return self


def build_model(
    cfg: LLMConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    new_tokens: Sequence[str] = (),
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Make the model and its (extended) tokenizer.

    ``tiny`` needs ``tokenizer`` (from :func:`train_tokenizer`). A checkpoint path loads
    its own tokenizer unless one is given; ``new_tokens`` (``sid_vocabulary(...)`` plus
    advertiser tokens) are added in both cases, the embeddings resized, and each new row
    set to the mean of the existing rows plus small seeded noise: a new token then starts
    as an "average" word instead of a random direction with an outsized norm, and the noise
    breaks the tie between S-ID tokens that would otherwise get identical logits.
    """
    dtype = getattr(torch, cfg.dtype)
    if cfg.base == "tiny":
        if tokenizer is None:
            raise ValueError("base='tiny' needs a tokenizer (leadre_model.llm.tokenizer.train_tokenizer)")
        extend_tokenizer(tokenizer, new_tokens)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=cfg.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            tie_word_embeddings=cfg.tie_embeddings,
            attention_dropout=cfg.dropout,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG
            torch.manual_seed(cfg.seed)
            model = Qwen2ForCausalLM(config).to(dtype)
        model.name_or_path = "tiny"
        if cfg.dropout:
            embedding_dropout(model, cfg.dropout)
        if cfg.hidden_dropout:
            residual_dropout(model, cfg.hidden_dropout)
    else:
        path = Path(cfg.base)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a local checkpoint directory (nothing is downloaded)")
        if tokenizer is None:
            tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        added = extend_tokenizer(tokenizer, new_tokens)
        _resize_with_mean(model, tokenizer, tokenizer.convert_tokens_to_ids(added), cfg.seed)
    neutral_generation_config(model, tokenizer)
    if cfg.lora is not None:
        model = with_lora(model, cfg.lora, leadre_token_ids(tokenizer, new_tokens))
    elif cfg.trainable == "new_tokens":
        train_only_token_rows(model, leadre_token_ids(tokenizer, new_tokens))
    return model, tokenizer


def embedding_dropout(model: PreTrainedModel, p: float) -> None:
    """Dropout on the input embeddings while training (a forward hook: the saved model is a
    plain checkpoint, and eval mode turns it off)."""
    emb = model.get_input_embeddings()
    emb.register_forward_hook(lambda m, _args, out: torch.nn.functional.dropout(out, p, m.training))


def residual_dropout(model: PreTrainedModel, p: float) -> None:
    """Dropout on each decoder block's attention and MLP outputs while training, the two
    branches added to the residual stream (forward hooks, as :func:`embedding_dropout`)."""
    def drop_first(m: torch.nn.Module, _args: Any, out: Any) -> Any:
        return (torch.nn.functional.dropout(out[0], p, m.training), *out[1:])

    for layer in model.base_model.layers:
        layer.self_attn.register_forward_hook(drop_first)  # (attn_output, attn_weights)
        layer.mlp.register_forward_hook(
            lambda m, _args, out: torch.nn.functional.dropout(out, p, m.training))


def with_lora(model: PreTrainedModel, cfg: LoraSettings, token_ids: Sequence[int]) -> PreTrainedModel:
    """Wrap ``model`` in PEFT LoRA adapters (see :class:`LoraSettings`)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise UsageError(f"LoRA: none of {cfg.target_modules} is a module of this model")
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=targets, task_type="CAUSAL_LM",
                          trainable_token_indices=list(token_ids) or None)
    return get_peft_model(model, peft_cfg)


def leadre_token_ids(tokenizer: PreTrainedTokenizerBase, extra: Sequence[str] = ()) -> list[int]:
    """Ids of the S-ID tokens, the soft-prompt token and ``extra`` (advertisers)."""
    vocab = tokenizer.get_vocab()
    names = {t for t in vocab if SID_TOKEN.fullmatch(t)} | {SOFT_TOKEN} | set(extra)
    return sorted(vocab[t] for t in names if t in vocab)


def train_only_token_rows(model: PreTrainedModel, token_ids: Sequence[int]) -> None:
    """Freeze every parameter but the embedding matrices, and mask their gradients to
    ``token_ids``' rows. Use weight_decay=0 on the embeddings: decoupled weight decay
    would still shrink the frozen rows (their gradient is zero, not absent)."""
    rows = torch.as_tensor(list(token_ids), dtype=torch.long)
    for p in model.parameters():
        p.requires_grad_(False)
    matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(),
                                                  model.get_output_embeddings()) if m is not None}
    for w in matrices.values():  # once per matrix: tied embeddings share one
        keep = torch.zeros(w.shape[0], 1, dtype=torch.bool, device=w.device)
        keep[rows.to(w.device)] = True
        w.requires_grad_(True)
        w.register_hook(lambda g, k=keep: g * k.to(g.dtype))


def neutral_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Replace the model's generation_config with library defaults (+ the special ids).

    A checkpoint's own ``generation_config.json`` (do_sample, top_k, num_beams,
    repetition_penalty, …) silently overrides whatever ``generate()`` is not told
    explicitly — a known way for "constrained" decoding to end up sampling. Our decoder
    does not call ``generate()`` at all; this keeps any other caller honest too.
    """
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    index_digest: str,
    extra: dict[str, Any] | None = None,
    members: Sequence[PreTrainedModel] = (),
) -> dict[str, Any]:
    """Write weights (safetensors), config, tokenizer and ``manifest.json`` into a temp dir
    and swap it in (readers never see half a model). Returns the manifest. ``members``: the
    other models of an ensemble (same tokenizer), saved in ``members/1``, ``members/2``, …
    (:func:`load_members`); the version then hashes every member's weights."""
    if hasattr(model, "merge_and_unload"):  # PEFT: save the merged plain model
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        paths = [f"{MEMBERS_DIR}/{i}" for i in range(1, len(members) + 1)]
        for path, member in zip(paths, members, strict=True):
            member.save_pretrained(tmp / path, safe_serialization=True)
        weights = weights_sha256(tmp, paths)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": weights[:16],  # content-addressed: same weights, same version
            "base": model.name_or_path or model.config.model_type,
            "architecture": model.config.model_type,
            "num_parameters": sum(m.num_parameters() for m in (model, *members)),
            "weights_sha256": weights,
            "tokenizer_sha256": tokenizer_hash(tokenizer),
            "index_digest": index_digest,
            "level_sizes": sid_level_sizes(tokenizer),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "extra": extra or {},
        }
        if paths:
            manifest["members"] = paths
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def load_model(
    model_dir: str | Path,
    expected_index_digest: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load (model in eval mode on ``device`` (default: the CPU), tokenizer, manifest)
    saved by :func:`save_model`, wherever it was trained (weights are saved device-free).

    BadInputError (a ValueError) when ``expected_index_digest`` (``SidIndex.digest()`` of
    the index about to be served) differs from the one the model was trained on — its S-ID
    tokens would mean other ads — or when the tokenizer on disk is not the one the manifest
    names.
    The generation_config is reset (see :func:`neutral_generation_config`).
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if expected_index_digest is not None:
        Manifest.model_validate(manifest).check_index(expected_index_digest, model_dir)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer_hash(tokenizer) != manifest["tokenizer_sha256"]:
        raise BadInputError(f"{model_dir}: tokenizer files do not match the manifest's "
                            "tokenizer_sha256")
    tokenizer.padding_side = "left"
    with _quiet_item_text_report():
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    model.name_or_path = manifest["base"]
    neutral_generation_config(model, tokenizer)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer, manifest


MEMBERS_DIR = "members"  # an ensemble's other models, inside the model directory


def member_dirs(model_dir: str | Path, manifest: dict[str, Any]) -> list[Path]:
    """The directories of an ensemble's other members that ``manifest`` (of ``model_dir``)
    lists (none for a single model); BadInputError for one outside ``model_dir`` or not
    saved there."""
    out = []
    for rel in Manifest.model_validate(manifest).members:
        path = Path(model_dir) / rel
        if not path.resolve().is_relative_to(Path(model_dir).resolve()):
            raise BadInputError(f"{model_dir}: ensemble member {rel!r} lies outside the model")
        if not (path / "config.json").is_file():
            raise BadInputError(f"{model_dir}: the manifest lists ensemble member {rel!r}, "
                                "but it is not saved there")
        out.append(path)
    return out


def load_members(model_dir: str | Path, manifest: dict[str, Any], dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> list[tuple[Path, PreTrainedModel]]:
    """The other members of an ensemble saved by :func:`save_model` (none for a single
    model) with their directories, in eval mode on ``device``; they use the model
    directory's tokenizer. The item text map and the dense head are restored by the caller
    (from the member's directory), as for the first member."""
    out = []
    for path in member_dirs(model_dir, manifest):
        with _quiet_item_text_report():
            member = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                          dtype=dtype)
        member.name_or_path = manifest["base"]
        if device is not None:
            member.to(device)
        out.append((path, member.eval()))
    return out


# The item-text map (llm/item_text.py) and the dense head (llm/dense_head.py) are saved with
# the weights but are not Qwen2 modules: transformers reports them as UNEXPECTED keys on
# every load, though restore_item_text and restore_dense_head put them back. Only a report
# about those keys alone is dropped; any other key still shows.
ITEM_TEXT_MODULE = "leadre_item_text"
DENSE_HEAD_MODULE = "leadre_dense_head"  # llm/dense_head.py, restored the same way
_OWN_MODULES = (ITEM_TEXT_MODULE, DENSE_HEAD_MODULE)


class _OnlyItemTextReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not any(m in msg for m in _OWN_MODULES):
            return True
        keys = [line for line in msg.splitlines() if "| UNEXPECTED" in line or "| MISSING" in line
                or "| MISMATCH" in line]
        return not all(line.lstrip().startswith(_OWN_MODULES) for line in keys)


@contextlib.contextmanager
def _quiet_item_text_report() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils",
                                              "transformers.utils.loading_report")]
    filt = _OnlyItemTextReport()
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``, exactly as saved.

    transformers 5's AutoTokenizer picks the class from config.json's model_type when
    tokenizer_config.json names the generic backend, so our trained BPE beside a qwen2
    config comes back as Qwen2Tokenizer with Qwen's NFC + regex pre-tokenizer: other ids
    for the same text. A generic tokenizer is therefore loaded generically."""
    cfg_path = Path(path) / "tokenizer_config.json"
    cls = json.loads(cfg_path.read_text()).get("tokenizer_class") if cfg_path.exists() else None
    if cls in _GENERIC_TOKENIZERS and (Path(path) / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def sid_level_sizes(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Codes per level known to the tokenizer (``<a_0>…<a_{K-1}>`` → K for level 0)."""
    sizes: dict[int, int] = {}
    for token in tokenizer.get_vocab():
        if SID_TOKEN.fullmatch(token):
            level = LEVEL_PREFIXES.index(token[1])
            sizes[level] = max(sizes.get(level, 0), int(token[3:-1]) + 1)
    return [sizes.get(level, 0) for level in range(max(sizes, default=-1) + 1)]


def init_sid_rows_from_codebooks(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                                 codebooks: torch.Tensor, seed: int = 0) -> int:
    """Set the input-embedding row of every ``<level_code>`` token to its RQ-VAE codebook
    vector (``codebooks``: (levels, K, d)) through a seeded random projection d → hidden,
    scaled to the rows' current norm: codes close in the RQ-VAE start close in the LM.
    The disambiguation level has no codebook and keeps its init. Returns rows set."""
    from leadre_model.index.sids import level_token

    emb = model.get_input_embeddings().weight
    levels, k, d = codebooks.shape
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(d, emb.shape[1], generator=gen) / d**0.5
    vocab, n = tokenizer.get_vocab(), 0
    with torch.no_grad():
        scale = emb.norm(dim=1).mean()
        for level in range(levels):
            vecs = codebooks[level].float() @ proj
            vecs = vecs / vecs.norm(dim=1, keepdim=True).clamp(min=1e-8) * scale
            for code in range(k):
                tid = vocab.get(level_token(level, code))
                if tid is not None:
                    emb[tid] = vecs[code].to(emb.dtype)
                    n += 1
    return n


def _resize_with_mean(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      new_ids: Sequence[int], seed: int) -> None:
    old_rows = model.get_input_embeddings().weight.shape[0]
    if not new_ids and len(tokenizer) <= old_rows:
        return
    model.resize_token_embeddings(max(len(tokenizer), old_rows), mean_resizing=False)
    new = torch.as_tensor(list(new_ids), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    matrices = [emb_in.weight] + ([emb_out.weight] if emb_out is not None
                                  and emb_out.weight is not emb_in.weight else [])
    with torch.no_grad():
        for w in matrices:
            old = torch.ones(w.shape[0], dtype=torch.bool)
            old[new] = False
            old[old_rows:] = False
            base = w[old].float()
            noise = torch.randn(len(new), w.shape[1], generator=gen) * base.std(0) * 0.02
            w[new] = (base.mean(0) + noise).to(w.dtype)


def weights_sha256(model_dir: Path, members: Sequence[str] = ()) -> str:
    """The hash of a saved model's weights: its own safetensors, then each member's."""
    return _files_sha256([f for d in (model_dir, *(model_dir / m for m in members))
                          for f in sorted(d.glob("*.safetensors"))])


def _files_sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


__all__ = [
    "LLMConfig",
    "build_model",
    "leadre_token_ids",
    "load_members",
    "load_model",
    "load_tokenizer",
    "member_dirs",
    "neutral_generation_config",
    "read_manifest",
    "save_model",
    "sid_level_sizes",
    "train_only_token_rows",
    "weights_sha256",
]
