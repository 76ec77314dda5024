"""Tokenized splits, their on-disk cache, training batches and the fixed evaluation windows.

Splits are contiguous runs of the corpus text (train | val | test), so no test passage leaks
into training through overlapping windows. The tokenized arrays are cached, keyed by the corpus
fingerprint, tokenizer and split fractions: the second trial of a study starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainers.config import DataConfig
from trainers.corpus import load_corpus
from trainers.errors import CorpusError
from trainers.tokenizer import Tokenizer, tokenizer_from_state, train_tokenizer

SPLITS = ("train", "val", "test")
# what a training run reads; the test split is for hpo.validate alone
TRAINING_SPLITS = ("train", "val")
# windows per evaluation batch: fixed, so it does not vary with a trial's batch size
EVAL_BATCH_SIZE = 32
CACHE_VERSION = 1


@dataclass
class Data:
    tokens: dict[str, torch.Tensor]  # split -> 1-D int64 ids (on the training device once moved)
    tokenizer: Tokenizer
    bytes_per_token: dict[str, float]  # split -> UTF-8 bytes per token, for bits per byte
    fingerprint: str  # of the corpus text
    corpus: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def to(self, device: torch.device) -> Data:
        """Keep the whole dataset resident on the device: batches are then pure indexing."""
        self.tokens = {k: v.to(device) for k, v in self.tokens.items()}
        return self

    def info(self) -> dict:
        return {
            "corpus": self.corpus,
            "fingerprint": self.fingerprint,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.vocab_size,
            "tokens": {k: int(v.numel()) for k, v in self.tokens.items()},
        }


def load_data(
    cfg: DataConfig, *, block_size: int, needed: tuple[str, ...] = TRAINING_SPLITS
) -> Data:
    """Tokenized splits for `cfg`, from the cache when it has them. Raises CorpusError when a
    `needed` split is too short for one context window."""
    corpus = load_corpus(cfg.corpus, max_chars=cfg.max_chars)
    key = _cache_key(corpus.fingerprint, cfg)
    path = _cache_dir(cfg) / f"{key}.npz"
    data = _read_cache(path, corpus.name)
    if data is None:
        data = _tokenize(corpus.text, cfg)
        data.fingerprint, data.corpus = corpus.fingerprint, corpus.name
        _write_cache(path, data)
    for split in needed:
        n = data.tokens[split].numel()
        if n <= block_size + 1:
            raise CorpusError(
                f"the {split} split of corpus {cfg.corpus!r} has {n} tokens, fewer than the "
                f"context of {block_size} + 1: use a longer corpus, a larger {split} part of "
                f"data.splits (now {','.join(map(str, cfg.splits))}) or a smaller model.block_size"
            )
    return data


def _tokenize(text: str, cfg: DataConfig) -> Data:
    n = len(text)
    cut1 = int(n * cfg.splits[0])
    cut2 = int(n * (cfg.splits[0] + cfg.splits[1]))
    parts = {"train": text[:cut1], "val": text[cut1:cut2], "test": text[cut2:]}
    # char vocabularies come from the whole text (an alphabet reveals nothing); BPE merges are
    # learned from the train split only, so tuning never sees val/test statistics.
    tokenizer = train_tokenizer(
        cfg.tokenizer,
        text if cfg.tokenizer == "char" else parts["train"],
        vocab_size=cfg.vocab_size,
    )
    tokens, bytes_per_token = {}, {}
    for split, part in parts.items():
        ids = tokenizer.encode(part)
        tokens[split] = torch.from_numpy(ids.astype(np.int64))
        bytes_per_token[split] = len(part.encode("utf-8")) / max(len(ids), 1)
    return Data(tokens, tokenizer, bytes_per_token, fingerprint="", corpus="")


def _cache_dir(cfg: DataConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("HPO_CACHE") or Path.home() / ".cache" / "hpo"
    return Path(root) / "tokens"


def _cache_key(fingerprint: str, cfg: DataConfig) -> str:
    parts = [CACHE_VERSION, fingerprint, cfg.tokenizer, list(cfg.splits)]
    if cfg.tokenizer == "bpe":
        parts.append(cfg.vocab_size)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _read_cache(path: Path, corpus: str) -> Data | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            tokens = {s: torch.from_numpy(z[s].astype(np.int64)) for s in SPLITS}
    except Exception:  # a torn or foreign file: rebuild rather than fail
        return None
    return Data(
        tokens=tokens,
        tokenizer=tokenizer_from_state(meta["tokenizer"]),
        bytes_per_token=meta["bytes_per_token"],
        fingerprint=meta["fingerprint"],
        corpus=corpus,
    )


def _write_cache(path: Path, data: Data) -> None:
    """Write atomically (temp file + rename), so parallel workers never read half a file."""
    meta = {
        "tokenizer": data.tokenizer.state(),
        "bytes_per_token": data.bytes_per_token,
        "fingerprint": data.fingerprint,
    }
    dtype = np.uint16 if data.vocab_size <= 2**16 else np.int32
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                meta=np.array(json.dumps(meta)),
                **{s: data.tokens[s].numpy().astype(dtype) for s in SPLITS},
            )
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time


class BatchSampler:
    """Random training windows from a seeded generator: same seed, same batches, any device."""

    def __init__(
        self, tokens: torch.Tensor, *, batch_size: int, block_size: int, seed: int
    ) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        # on the CPU: its state checkpoints anywhere
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(block_size + 1, device=tokens.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both (batch_size, block_size); y is x shifted by one token."""
        starts = torch.randint(
            self.tokens.numel() - self.block_size - 1, (self.batch_size,), generator=self.generator
        )
        windows = self.tokens[
            starts.to(self.tokens.device, non_blocking=True)[:, None] + self._offsets
        ]
        return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: torch.Tensor, *, block_size: int, n_windows: int | None) -> torch.Tensor:
    """Start offsets of evaluation windows: spread evenly over the split, no randomness.

    With n_windows=None, every non-overlapping window of the split (a full pass, for testing).
    The same split, block size and count give the same windows, so every trial is measured on
    the same tokens.
    """
    last = tokens.numel() - block_size - 1
    if n_windows is None:
        return torch.arange(0, last + 1, block_size)
    return torch.linspace(0, last, n_windows).long()
