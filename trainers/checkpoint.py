"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a plain dict of tensors and primitives, so it loads with `weights_only=True`
(no arbitrary code runs on load). Writes are atomic: a temp file in the same folder, then a
rename, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainers.errors import DiskFullError

log = logging.getLogger(__name__)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

LAST = "last.pt"  # full state, for resuming
BEST = "best.pt"  # model weights at the best validation loss, for scoring


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        # a path, not a Python file: torch's zip writer then writes through its own C++ stream.
        # Given a Python file, a Ctrl-C inside torch.save can leave the writer unfinished; its
        # destructor then writes to the closed file and aborts the process (std::terminate)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # Ctrl-C inside torch.save comes out as the RuntimeError its zip writer raises on the
        # way out ("unexpected pos"); what happened is the interrupt, and callers handle that
        if not isinstance(e, KeyboardInterrupt) and isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        # a full disk comes out as ENOSPC, or as that same RuntimeError of the zip writer
        if isinstance(e, OSError | RuntimeError):
            needed, free = size_of(state), shutil.disk_usage(path.parent).free
            if _no_space(e) or free < needed:
                raise DiskFullError(str(path.parent), free, needed) from e
        raise


def size_of(state: Any) -> int:
    """Bytes of the tensors in a checkpoint: about what it takes on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(size_of(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(size_of(v) for v in state)
    return 0


def _no_space(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        e = e.__cause__ or e.__context__
    return False


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None (with a warning) when it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a checkpoint at all
        log.warning(
            "checkpoint %s is unreadable (%s: %s); starting fresh", path, type(e).__name__, e
        )
        return None


def rng_state(sampler_generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),  # dropout on the CPU
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": sampler_generator.get_state(),
    }


def restore_rng(state: dict[str, Any], sampler_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler_generator.set_state(state["data"])
