"""Where training text comes from: the built-in corpus, local files, or a Hugging Face dataset.

The built-in default ("stdlib") is the top-level Python source of the standard library of the
interpreter running us: it is on every machine, needs no download, and is real text with real
structure (about 4.7 MB on CPython 3.11). Its fingerprint (and so every cache key and manifest)
changes with the Python version, which is exactly what reproducibility needs to know.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from trainers.errors import CorpusError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tex", ".html"}
# Real text in another encoding or with a stray bad byte stays usable; a file where more than
# this share is not UTF-8 (or that holds NUL bytes) is binary, and training on it is a mistake.
MAX_NON_TEXT = 0.01


@dataclass(frozen=True)
class Corpus:
    name: str  # what the user asked for
    text: str
    fingerprint: str  # sha256 of the UTF-8 text, first 16 hex digits

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def load_corpus(spec: str, *, max_chars: int = 0) -> Corpus:
    """Read the corpus named by `spec` (see DataConfig.corpus). Raises CorpusError."""
    if spec == "stdlib":
        text = _read_files(_stdlib_files())
    elif spec.startswith("hf:"):
        text = _read_hf_hub(spec[3:])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise CorpusError(
                f"corpus {spec!r} not found: give an existing text file or folder, "
                "'stdlib' (built in) or 'hf:NAME' (a Hugging Face dataset)"
            )
        if path.is_dir() and _is_saved_hf_dataset(path):
            text = _hf_text(_load_from_disk(path), spec)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not files:
                raise CorpusError(
                    f"corpus folder {spec!r} has no text files ({', '.join(sorted(TEXT_SUFFIXES))})"
                )
            text = _read_files(files)
        else:
            text = _read_files([path])
    if max_chars:
        text = text[:max_chars]
    if not text.strip():
        raise CorpusError(f"corpus {spec!r} is empty: point data.corpus at a file with text in it")
    fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return Corpus(name=spec, text=text, fingerprint=fingerprint)


def _stdlib_files() -> list[Path]:
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def _read_files(files: list[Path]) -> str:
    parts = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CorpusError(f"cannot read corpus file {str(f)!r}: {e.strerror}") from e
        bad = text.count("\ufffd") + text.count("\x00")
        if "\x00" in text or bad > MAX_NON_TEXT * max(len(text), 1):
            raise CorpusError(
                f"corpus file {str(f)!r} is not text ({bad / max(len(text), 1):.0%} of it is not "
                "UTF-8 or is NUL bytes): give a text file, or a folder of them"
            )
        parts.append(text)
    return "\n".join(parts)


def _is_saved_hf_dataset(path: Path) -> bool:
    # datasets.save_to_disk writes these; a DatasetDict has a dataset_dict.json instead
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _load_from_disk(path: Path):
    import datasets  # imported lazily: it is slow to import and only these corpora need it

    return datasets.load_from_disk(str(path))


def _read_hf_hub(name: str) -> str:
    import datasets

    dataset, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(dataset, config or None, split="train")
    except Exception as e:  # offline, unknown name, gated: all end the same way for the user
        raise CorpusError(
            f"cannot load Hugging Face dataset {name!r} ({type(e).__name__}: {e}); "
            "when offline, save it with datasets' save_to_disk and give that folder instead"
        ) from e
    return _hf_text(ds, f"hf:{name}")


def _hf_text(ds, spec: str) -> str:
    """The 'text' column (or the only string column) of a Dataset, or of a DatasetDict's train."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise CorpusError(f"dataset {spec!r} has no 'train' split; its splits: {list(ds)}")
        ds = ds["train"]
    columns = [
        c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")
    ]
    column = "text" if "text" in ds.column_names else (columns[0] if len(columns) == 1 else None)
    if column is None:
        raise CorpusError(
            f"dataset {spec!r} has no 'text' column to train on; its columns: {ds.column_names}"
        )
    return "\n".join(t for t in ds[column] if t)
