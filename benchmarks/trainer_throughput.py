"""Trainer throughput: tokens/s and achieved FLOP/s, against this machine's own matmul speed.

    python benchmarks/trainer_throughput.py [--corpus PATH] [--steps 300]
    python benchmarks/trainer_throughput.py --time-to-loss 1.4697     # GPU: nanoGPT's recipe
    python benchmarks/trainer_throughput.py --seam [--rounds 5]       # the seam's cost

The baseline is measured in the same run: a large matmul (the best any model of ours could do
per FLOP) and a matmul of the model's own hidden shape. "of matmul" is the trainer's model
FLOP/s over the large matmul's; on a GPU whose peak is known (PEAK_BF16), "mfu" is the model
FLOP/s over that peak (model FLOP utilization, as nanoGPT and PaLM define it). On a CUDA GPU it
measures nanoGPT's shakespeare-char recipe (6 layers, 6 heads, width 384, context 256, batch
64) in bf16, with and without torch.compile. --time-to-loss trains that recipe to the val loss
nanoGPT publishes for it (1.4697) and reports the wall time. benchmarks/gpu.md is the runbook.
--seam trains the default config directly (trainers.train with a report callback and
checkpoints, as hpo.objective called it before the seam) and through the seam (hpo.gpt behind
hpo.seam.Run, as every engine calls it now), alternating round by round, and gives the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from scipy import stats

from trainers import StopTraining, TrainConfig, train
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
# nanoGPT's config/train_shakespeare_char.py on top of GPU_CONFIG: its published result is val
# loss 1.4697 after 5000 iterations (about 3 minutes on an A100, its README says)
NANOGPT_RECIPE = {
    **GPU_CONFIG,
    "model.dropout": 0.2,
    "optim.lr": 1e-3,
    "optim.beta2": 0.99,
    "optim.weight_decay": 0.1,
    "schedule.name": "cosine",
    "schedule.warmup_frac": 100 / 5000,
    "schedule.min_lr_frac": 0.1,
    "train.max_steps": 5000,
    "train.eval_interval": 250,
    "train.eval_batches": 7,  # 7 x 32 = 224 windows of 256 tokens, about nanoGPT's 200 x 64
}
# dense bf16 tensor FLOP/s from the vendors' data sheets, by a name torch reports
PEAK_BF16 = {
    "H100 SXM": 989.4e12,
    "H100 80GB HBM3": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H200": 989.4e12,
    "A100": 312.0e12,
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
    spec_peak = gpu_peak()
    return {
        "config": label,
        "tokens_per_s": round(steady),
        "model_gflops": round(steady * per_token / 1e9, 1),
        "of_matmul": round(steady * per_token / peak, 3),
        "mfu": round(steady * per_token / spec_peak, 3) if spec_peak else None,
        "params": result.n_params,
        "val_loss": round(result.metrics["val/loss"], 4),
        "peak_mem_mb": round(result.metrics["system/peak_mem_mb"]),
    }


def gpu_peak() -> float | None:
    """The data-sheet bf16 peak of this GPU, when it is one we know."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def time_to_loss(corpus: str, target: float, compile_model: bool) -> dict:
    """nanoGPT's recipe with hpo's trainer: the wall time until val loss first reaches
    `target` (the run stops there), against nanoGPT's own time on the same GPU (gpu.md)."""
    cfg = TrainConfig().with_overrides(
        {**NANOGPT_RECIPE, "data.corpus": corpus, "train.compile": compile_model}
    )
    start, reached = time.perf_counter(), {}

    def report(step: int, metrics: dict[str, float]) -> None:
        if metrics["val/loss"] <= target and not reached:
            reached.update(step=step, seconds=time.perf_counter() - start)
            raise StopTraining("reached")

    result = train(cfg, report=report)
    return {
        "target_val_loss": target,
        "compile": compile_model,
        "reached_at_step": reached.get("step"),
        "seconds": round(reached["seconds"], 1) if reached else None,
        "best_val_loss": round(result.best_val_loss, 4),
        "steps": result.steps,
    }


def seam_versus_direct(base: TrainConfig, rounds: int) -> dict:
    """`base` trained directly and through the seam, `rounds` times each: the steady tokens/s
    of each run (evaluations and reports excluded) and its whole wall time (all included)."""
    from hpo import gpt
    from hpo.seam import Run, execute

    speeds: dict[str, list[float]] = {"direct": [], "seam": []}
    walls: dict[str, list[float]] = {"direct": [], "seam": []}
    data = gpt.data_for(base)
    for r in range(rounds):
        for how in ("direct", "seam") if r % 2 == 0 else ("seam", "direct"):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                if how == "direct":
                    result = train(base, report=lambda s, m: None, checkpoint_dir=tmp, data=data)
                    history = result.history
                else:
                    run = Run(base.flat(), metric="val/loss", minimize=True, checkpoint_dir=tmp)
                    history = execute(gpt.train, run).history
                walls[how].append(time.perf_counter() - start)
            speeds[how].append(statistics.median(row["system/tokens_per_s"] for row in history[1:]))

    def ratio(values: dict[str, list[float]]) -> dict:
        per_round = [a / b for a, b in zip(values["seam"], values["direct"], strict=True)]
        logs = [math.log(x) for x in per_round]
        mean, n = statistics.mean(logs), len(logs)
        half = stats.t.ppf(0.975, n - 1) * statistics.stdev(logs) / math.sqrt(n) if n > 1 else 0
        return {
            "per round": [round(x, 3) for x in per_round],
            "geometric mean": round(math.exp(mean), 3),
            "95% t-interval": [round(math.exp(mean - half), 3), round(math.exp(mean + half), 3)],
        }

    return {
        "tokens_per_s": {k: [round(x) for x in v] for k, v in speeds.items()},
        "wall_s": {k: [round(x, 2) for x in v] for k, v in walls.items()},
        "seam / direct, tokens/s": ratio(speeds),
        "direct / seam, wall time": ratio({"seam": walls["direct"], "direct": walls["seam"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--time-to-loss", type=float, metavar="LOSS", help="train nanoGPT's recipe to this loss"
    )
    parser.add_argument("--compile", action="store_true", help="with --time-to-loss")
    parser.add_argument("--seam", action="store_true", help="direct vs through the seam")
    parser.add_argument("--rounds", type=int, default=5, help="with --seam")
    args = parser.parse_args()
    if args.time_to_loss is not None:
        print(json.dumps(time_to_loss(args.corpus, args.time_to_loss, args.compile), indent=2))
        return
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
    if args.seam:
        print(json.dumps({"machine": machine, **seam_versus_direct(base, args.rounds)}, indent=2))
        return
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
