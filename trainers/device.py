"""Device and precision choices, kept out of the loop so the loop reads as the algorithm."""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator

import torch

from trainers.errors import ConfigError, OutOfMemoryError


def resolve_device(name: str) -> torch.device:
    """auto: cuda > mps > cpu. An explicit device that is not there is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps but MPS is not available; use train.device=auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 autocast on GPUs that support it, float32 elsewhere (CPU bf16 is slower)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(device: torch.device, *, deterministic: bool) -> None:
    """Process-wide switches: TF32 matmuls on CUDA (bf16-level accuracy, much faster)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def device_name(device: torch.device) -> str:
    """Human name of the hardware: the GPU's model, or the CPU's from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_memory_mb(device: torch.device) -> float | None:
    """A GPU's total memory (what packed trials share); None for a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        # reserved, not allocated: what the caching allocator holds, and no other process can use
        return torch.cuda.max_memory_reserved(device) / 2**20
    # resident set size of the whole process: kilobytes on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


@contextlib.contextmanager
def out_of_memory_as_error(device: torch.device) -> Iterator[None]:
    """Turn the device (or host) running out of memory inside the block into OutOfMemoryError,
    after releasing what can be released: a tuner records it and goes on to the next trial."""
    try:
        yield
    except Exception as e:
        if is_out_of_memory(e):
            release_memory(device)
            raise OutOfMemoryError(str(device), str(e)) from None
        raise


def release_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
