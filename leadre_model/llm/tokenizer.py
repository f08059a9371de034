"""Tokenizers for the LEADRE LLM: a small byte-level BPE trained on the prompt corpus, or a
local checkpoint's tokenizer, both extended with the S-ID, advertiser and soft-prompt tokens.

Every S-ID token (``<a_12>``), advertiser token and the soft-prompt token is an *added*
token: the tokenizer matches it on the raw text before BPE runs, so it is always exactly
one id and never split. Control tokens (pad, eos, soft prompt) are *special* (dropped by
``decode(skip_special_tokens=True)``); S-ID and advertiser tokens are not, so a decoded
response still reads ``<a_12><b_7>…``. Padding is on the left, as batched generation needs
(every prompt's last token sits in the last column).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import Field
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from leadre_model.configbase import StrictConfig
from leadre_model.errors import BadInputError
from leadre_model.index.sids import SID_TOKEN, level_token, sid_vocabulary

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
SOFT_TOKEN = "<|leadre_soft|>"
MAX_LENGTH = 2560  # = the tiny model's max positions; prompts are budgeted below it (§4.2)


class TokenizerConfig(StrictConfig):
    """Byte-level BPE trained from scratch on the prompts (seconds for ~10k prompts)."""

    vocab_size: int = Field(default=3000, ge=300, le=65_536,
                            description="BPE vocabulary before the added tokens")
    min_frequency: int = Field(default=2, ge=1)
    model_max_length: int = Field(default=MAX_LENGTH, ge=16)


def train_tokenizer(
    corpus: Iterable[str],
    level_sizes: Sequence[int],
    advertisers: Sequence[str] = (),
    cfg: TokenizerConfig | None = None,
    extra_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` and add the S-ID / advertiser / soft tokens.

    S-IDs and advertiser tokens are cut out of the training text first: they become whole
    added tokens anyway, so merges spent on ``<a_`` fragments would be wasted vocabulary.
    ``extra_tokens`` (the compact prompt vocabulary) are added like S-IDs. Deterministic
    for a given corpus and config.
    """
    cfg = cfg or TokenizerConfig()
    strip = _strip_pattern([*advertisers, *extra_tokens])
    bpe = Tokenizer(models.BPE())
    # No prefix space: a prompt tokenizes the same at the start of a sequence or not.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((strip.sub(" ", text) for text in corpus), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
        truncation_side="left",  # if ever truncated, keep the most recent behaviour
        model_max_length=cfg.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    extend_tokenizer(tok, [*sid_vocabulary(level_sizes), *advertisers, *extra_tokens])
    return tok


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> list[str]:
    """Add ``tokens`` (S-IDs, advertisers) as never-split tokens, plus the soft-prompt
    token, a pad token (eos when the checkpoint has none) and left padding, in place.

    Returns the tokens that were new to the vocabulary (in id order), for embedding init.
    """
    before = set(tokenizer.get_vocab())
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in tokens
                          if t not in before])
    if SOFT_TOKEN not in before:
        tokenizer.add_tokens([AddedToken(SOFT_TOKEN, normalized=False, special=True)],
                             special_tokens=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    vocab = tokenizer.get_vocab()
    return sorted((t for t in vocab if t not in before), key=vocab.__getitem__)


def level_token_ids(tokenizer: PreTrainedTokenizerBase, level_sizes: Sequence[int]) -> list[np.ndarray]:
    """Token id of every code at every level: ``out[l][c]`` = id of ``<{l}_{c}>``.

    ValueError when the tokenizer lacks any of them (it was extended for another index).
    """
    vocab = tokenizer.get_vocab()
    out, missing = [], []
    for level, k in enumerate(level_sizes):
        names = [level_token(level, c) for c in range(k)]
        missing += [n for n in names if n not in vocab]
        out.append(np.array([vocab.get(n, -1) for n in names], dtype=np.int64))
    if missing:
        raise BadInputError(f"tokenizer lacks {len(missing)} S-ID tokens, e.g. {missing[:3]} "
                            f"(it was built for other level sizes than {list(level_sizes)})")
    return out


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer definition (normaliser, pre-tokeniser, vocab, merges, added
    tokens), not of the padding/truncation state a call leaves on the backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {k: v for k, v in json.loads(backend.to_str()).items()
                if k not in ("padding", "truncation")}
        text = json.dumps(spec, sort_keys=True)
    else:  # a slow (python) tokenizer: the token → id map is what must not change
        text = "\n".join(f"{t}\t{i}" for t, i in sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _strip_pattern(advertisers: Sequence[str]) -> re.Pattern[str]:
    words = [PAD_TOKEN, EOS_TOKEN, SOFT_TOKEN, *advertisers]
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(f"{SID_TOKEN.pattern}|{alternatives}")


__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SOFT_TOKEN",
    "TokenizerConfig",
    "extend_tokenizer",
    "level_token_ids",
    "tokenizer_hash",
    "train_tokenizer",
]
