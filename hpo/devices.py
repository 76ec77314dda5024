"""Which GPU each worker process of a study trains on, and how trials share one.

    python -m hpo.run --study lr_sweep                     # one worker per visible GPU
    python -m hpo.run --study lr_sweep --trials-per-gpu 4  # four small trials on each GPU
    CUDA_VISIBLE_DEVICES=2,3 python -m hpo.run ...          # only those two, as the user said

The GPUs are those CUDA_VISIBLE_DEVICES lists (its entries, indices or UUIDs, are handed on as
written), else every GPU torch sees. Worker i gets GPU i mod G through a CUDA_VISIBLE_DEVICES
of its own, so that its trials train on its "cuda:0".

Trials that share a GPU hold a shared lock on it while they train; the retry of a trial that ran
out of memory there holds it alone (an exclusive lock, taken through a turnstile so that new
trials wait behind it rather than starve it). The locks are files in this machine's temporary
folder: GPUs belong to one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from hpo.errors import UsageError

LOCKS = Path(tempfile.gettempdir()) / "hpo-gpu-locks"


@dataclass(frozen=True)
class Placement:
    """The GPUs a study's workers use on this machine, and how many trials share each."""

    gpus: tuple[str, ...]
    per_gpu: int = 1

    def gpu_of(self, worker: int) -> str:
        return self.gpus[worker % len(self.gpus)]

    def describe(self, n_workers: int) -> str:
        share = f", {self.per_gpu} trials per GPU" if self.per_gpu > 1 else ""
        used = ", ".join(dict.fromkeys(self.gpu_of(i) for i in range(n_workers)))
        return f"GPU(s) {used}{share}"


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU
        names = []
        for name in (part.strip() for part in listed.split(",")):
            if not name or name.startswith("-"):
                break
            names.append(name)
        return tuple(names)
    return tuple(str(i) for i in range(torch.cuda.device_count()))


def place_workers(
    *, workers: int | None, trials_per_gpu: int | None, device: str
) -> tuple[int, Placement | None]:
    """How many worker processes to run, and on which GPUs. Without GPUs (or on the CPU) one
    worker unless told otherwise; with G GPUs, G x trials_per_gpu."""
    if trials_per_gpu is not None and trials_per_gpu < 1:
        raise UsageError(f"--trials-per-gpu must be at least 1, but got {trials_per_gpu}")
    gpus = visible_gpus() if device in ("auto", "cuda") else ()
    if not gpus:
        if trials_per_gpu is not None:
            where = "train.device=cpu" if device not in ("auto", "cuda") else "no GPU is visible"
            raise UsageError(
                f"--trials-per-gpu packs trials on GPUs, but {where} "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                f"torch sees {torch.cuda.device_count()}); drop it, or use --workers"
            )
        return workers or 1, None
    per_gpu = trials_per_gpu or 1
    slots = len(gpus) * per_gpu
    if workers is not None and trials_per_gpu is not None and workers > slots:
        raise UsageError(
            f"--workers {workers} would put more than --trials-per-gpu {per_gpu} trials on some "
            f"of the {len(gpus)} GPU(s) {','.join(gpus)}: give --workers {slots} or fewer"
        )
    n = workers or slots
    return n, Placement(gpus, per_gpu=max(per_gpu, -(-n // len(gpus))))


@contextlib.contextmanager
def gpu_share(gpu: str | None, *, alone: bool = False) -> Iterator[None]:
    """Hold `gpu` while a trial trains: shared with the other trials placed on it, or alone
    (a retry after running out of memory). No GPU: nothing to hold."""
    if gpu is None:
        yield
        return
    LOCKS.mkdir(parents=True, exist_ok=True)
    name = gpu.replace("/", "_")
    with open(LOCKS / f"{name}.turnstile", "a") as gate, open(LOCKS / f"{name}.lock", "a") as lock:
        # the turnstile: a trial waiting to run alone holds it, so new trials queue behind it
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
