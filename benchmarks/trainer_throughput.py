"""Trainer throughput: tokens/s and achieved FLOP/s, against this machine's own matmul speed.

    python benchmarks/trainer_throughput.py [--corpus PATH] [--steps 300]

The baseline is measured in the same run: a large float32 matmul (the best any model of ours
could do per FLOP) and a matmul of the model's own hidden shape. The ratio "of matmul" is the
trainer's model FLOP/s over the large matmul's. On a CUDA GPU it also measures the issue's GPU
config (6 layers, 6 heads, width 384, context 256, batch 64) in bf16, with and without
torch.compile.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from trainers import TrainConfig, train
from trainers.device import resolve_device
from trainers.model import flops_per_token

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
CPU_CONFIG = {}  # the trainer's defaults: 4 layers, 4 heads, width 128, context 64, batch 12
GPU_CONFIG = {
    "model.n_layer": 6,
    "model.n_head": 6,
    "model.n_embd": 384,
    "model.block_size": 256,
    "train.batch_size": 64,
}


def matmul_flops(
    n: int, k: int, m: int, device: torch.device, dtype: torch.dtype, seconds: float = 2.0
) -> float:
    a = torch.randn(n, k, device=device, dtype=dtype)
    b = torch.randn(k, m, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        _sync(device)
        reps += 10
    return 2 * n * k * m * reps / (time.perf_counter() - start)


def measure(cfg: TrainConfig, peak: float, label: str) -> dict:
    result = train(cfg)
    # each history row holds the throughput since the previous evaluation; the first interval
    # includes warm-up (and compilation), so the steady state is the median of the others
    steady = statistics.median(row["system/tokens_per_s"] for row in result.history[1:])
    per_token = flops_per_token(cfg.model, result.data["vocab_size"])
    return {
        "config": label,
        "tokens_per_s": round(steady),
        "model_gflops": round(steady * per_token / 1e9, 1),
        "of_matmul": round(steady * per_token / peak, 3),
        "params": result.n_params,
        "val_loss": round(result.metrics["val/loss"], 4),
        "peak_mem_mb": round(result.metrics["system/peak_mem_mb"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    device = resolve_device("auto")
    base = TrainConfig().with_overrides(
        {
            "data.corpus": args.corpus,
            "train.max_steps": args.steps,
            "train.eval_interval": max(1, args.steps // 6),
            "train.eval_batches": 1,
        }
    )
    machine = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    rows = []
    if device.type == "cuda":
        peak = matmul_flops(8192, 8192, 8192, device, torch.bfloat16)
        shape = matmul_flops(64 * 256, 384, 4 * 384, device, torch.bfloat16)
        gpu = base.with_overrides(GPU_CONFIG)
        rows.append(measure(gpu, peak, "gpu 6L/384/ctx256/b64 bf16"))
        rows.append(
            measure(gpu.with_overrides({"train.compile": True}), peak, "... + torch.compile")
        )
    else:
        peak = matmul_flops(1024, 1024, 1024, device, torch.float32)
        shape = matmul_flops(12 * 64, 128, 4 * 128, device, torch.float32)
        rows.append(measure(base.with_overrides(CPU_CONFIG), peak, "cpu 4L/128/ctx64/b12 fp32"))
    report = {
        "machine": machine,
        "matmul_gflops": round(peak / 1e9, 1),
        "model_shape_matmul_gflops": round(shape / 1e9, 1),
        "runs": rows,
    }
    print(json.dumps(report, indent=2))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
