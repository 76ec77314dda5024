"""Tokenizers: characters, raw UTF-8 bytes, or byte-level BPE trained with HF `tokenizers`.

Each is built from training text, encodes to a numpy array of ids, and round-trips through a
small JSON-able `state` so the data cache and checkpoints can rebuild it exactly.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


class Tokenizer:
    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per Unicode character of the corpus (nanoGPT's shakespeare_char)."""

    name = "char"

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.vocab_size = len(chars)
        self._codepoints = _codepoints(chars)  # sorted, since chars is sorted

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> np.ndarray:
        cps = _codepoints(text)
        ids = np.searchsorted(self._codepoints, cps)
        unknown = (ids >= self.vocab_size) | (
            self._codepoints[np.minimum(ids, self.vocab_size - 1)] != cps
        )
        if unknown.any():
            bad = chr(int(cps[np.argmax(unknown)]))
            raise ValueError(f"character {bad!r} is not in the tokenizer's vocabulary")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "chars": self.chars}


class ByteTokenizer(Tokenizer):
    """The 256 byte values of UTF-8: no training, no unknown symbols."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def state(self) -> dict[str, Any]:
        return {"name": self.name}


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) trained with Hugging Face `tokenizers`."""

    name = "bpe"

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> np.ndarray:
        encodings = self._tok.encode_batch(list(_chunks(text)))
        return np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "json": self._tok.to_str()}


def train_tokenizer(name: str, text: str, *, vocab_size: int) -> Tokenizer:
    if name == "char":
        return CharTokenizer.train(text)
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ValueError(f"unknown tokenizer {name=}")


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    if state["name"] == "char":
        return CharTokenizer(state["chars"])
    if state["name"] == "byte":
        return ByteTokenizer()
    if state["name"] == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(state["json"]))
    raise ValueError(f"unknown tokenizer state {json.dumps(state)[:80]}")


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _chunks(text: str, lines_per_chunk: int = 256):
    """Line-aligned pieces, so that encoding runs in parallel batches. No token spans two
    pieces, which only changes how whitespace at a piece boundary is split."""
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), lines_per_chunk):
        yield "".join(lines[i : i + lines_per_chunk])
