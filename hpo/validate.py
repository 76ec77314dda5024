"""Prove the winner: python -m hpo.validate --seeds 10 [--study NAME] [--trial N | --top-k K]

Tuning chose the winner on the validation split with one seed. This trains the winner (or the
chosen trials) and the study's baseline with the same N seeds, paired (seed i gives both the
same initialisation and data order), at full budget with no pruning, scores each on the whole
test split at its best validation checkpoint, and says whether the difference is larger than
seed-to-seed noise. Each finished seed is stored in the study at once: a killed run resumes
without training a finished seed again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FixedTrial, TrialState
from tqdm.auto import tqdm

import search_spaces
from hpo.errors import HPOError
from hpo.flags import add_storage_flag, add_study_flags, stored_name
from hpo.record import TrialRecord
from hpo.stats import ADVISED_PAIRS, MIN_PAIRS, smallest_p
from hpo.storage import load_existing_study, runs_dir
from hpo.study_spec import TRACKERS, StudySpec
from hpo.tracking import Tracking, make_tracker, resolve_tracking, tracker_for
from hpo.validation_report import ATTR, report, write_report
from trainers import TrainConfig, preflight, score_checkpoint, train
from trainers.cli import run_cli

SEED_BASE = 1000  # validation seeds are 1000, 1001, ...: never the tuning seed


@dataclass(frozen=True)
class Job:
    label: str  # "baseline" or "trial_12"
    config: dict[str, Any]
    seed: int
    key: str  # study user attr that holds the result
    workdir: str
    tracking: Tracking = field(default_factory=Tracking)  # W&B / MLflow run per (config, seed)


def configs_to_validate(
    study: optuna.Study, *, trial: int | None, top_k: int
) -> dict[str, TrainConfig]:
    """{label: config} for the chosen trials and the baseline. Raises HPOError when there is
    nothing to compare."""
    if "hpo.spec" not in study.user_attrs:
        raise HPOError(f"study {study.study_name!r} was not made by hpo.run (no study spec stored)")
    spec = StudySpec(**study.user_attrs["hpo.spec"])
    sets = study.user_attrs.get("hpo.sets", {})
    if spec.baseline is None:
        raise HPOError(
            f"study {study.study_name!r} has no baseline to compare against: "
            "add a `baseline:` section to its YAML (e.g. `baseline: {}` for the trainer defaults)"
        )
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise HPOError(
            f"study {study.study_name!r} has no completed trial to validate; run hpo.run first"
        )
    if trial is not None:
        chosen = [t for t in complete if t.number == trial]
        if not chosen:
            raise HPOError(f"trial {trial} of {study.study_name!r} is not a completed trial")
    else:
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        chosen = sorted(complete, key=lambda t: t.value if minimize else -t.value)[:top_k]
    configs = {f"trial_{t.number}": trial_config(t, spec, sets) for t in chosen}
    configs["baseline"] = spec.baseline_config(sets)
    return configs


def trial_config(t: optuna.trial.FrozenTrial, spec: StudySpec, sets: dict[str, Any]) -> TrainConfig:
    """The config the trial trained: from its manifest, or rebuilt from its parameters."""
    manifest = TrialRecord.of(t).manifest
    if manifest is not None:
        return TrainConfig.from_dict(manifest["config"])
    overrides = search_spaces.suggest(FixedTrial(t.params, t.number), spec.search_space)
    return spec.train_config().with_overrides(overrides).with_overrides(sets)


def seeded(cfg: TrainConfig, seed: int) -> TrainConfig:
    """Seed i: the same initialisation, data order and dropout stream for every config."""
    return cfg.with_overrides({"train.seed": seed, "data.seed": None, "train.dropout_seed": None})


def run_job(job: Job) -> tuple[str, dict[str, Any]]:
    """Train one (config, seed) to the end and score its best checkpoint on the test split."""
    cfg = TrainConfig.from_dict(job.config)
    workdir = Path(job.workdir)
    tracker = tracker_for(job.tracking)
    meta = {"study": job.tracking.study, "label": job.label, "seed": job.seed}
    with tracker.run(f"{job.label}_seed{job.seed}", config=job.config, kind="validate", meta=meta):
        # resumes a seed killed mid-training
        result = train(cfg, checkpoint_dir=workdir, report=tracker.log)
        scores = score_checkpoint(cfg, workdir / "best.pt", split="test")
        tracker.summarize({**scores, "best/val/loss": result.best_val_loss})
    shutil.rmtree(workdir, ignore_errors=True)
    return job.key, {
        "seed": job.seed,
        "val/loss": result.best_val_loss,
        # bits per byte is loss scaled by a constant of the split: best at the same evaluation
        "val/bpb": min(row["val/bpb"] for row in result.history),
        **scores,
        "best_step": result.best_step,
        "steps": result.steps,
        "wall_time_s": round(result.wall_time_s, 2),
    }


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def validate(
    study: optuna.Study,
    configs: dict[str, TrainConfig],
    *,
    seeds: int,
    workers: int,
    progress: bool = True,
    tracking: Tracking | None = None,
) -> dict:
    jobs, results = [], {}
    root = runs_dir() / study.study_name / "validate"
    for label, cfg in configs.items():
        for i in range(seeds):
            seed = SEED_BASE + i
            c = seeded(cfg, seed)
            digest = hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True).encode()).hexdigest()[
                :10
            ]
            key = f"{ATTR}.{label}.{digest}"
            if key in study.user_attrs:
                results[key] = study.user_attrs[key]
            else:
                workdir = str(root / "work" / f"{label}_{digest}")
                jobs.append(
                    Job(label, c.to_dict(), seed, key, workdir, tracking=tracking or Tracking())
                )
    bar = tqdm(
        total=len(jobs) + len(results),
        initial=len(results),
        unit="run",
        desc="validate",
        disable=not progress,
    )
    if workers == 1:
        done = map(run_job, jobs)
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(
            workers,
            initializer=_init_worker,
            initargs=(max(1, torch.get_num_threads() // workers),),
        )
        done = pool.imap_unordered(run_job, jobs)
    for key, result in done:
        study.set_user_attr(key, result)  # stored at once: a rerun skips it
        results[key] = result
        bar.update()
    bar.close()
    per_config = {label: [] for label in configs}
    for key, result in results.items():
        per_config[key.split(".")[2]].append(result)
    return {label: sorted(rows, key=lambda r: r["seed"]) for label, rows in per_config.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.validate", description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_storage_flag(p)
    p.add_argument(
        "--seeds", type=int, default=10, help="paired seeds per config (at least 2; 10 advised)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="validate this trial instead of the best")
    which.add_argument("--top-k", type=int, default=1, help="validate the K best trials")
    p.add_argument("--workers", type=int, default=1, help="seeds trained side by side")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tracking",
        choices=TRACKERS,
        help="also log each (config, seed) run to W&B or MLflow (default: the study's, none)",
    )
    p.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI, or W&B's folder for run files"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupted = "interrupted: finished seeds are stored; rerun the same command to continue"
    return run_cli(lambda: _validate(args), interrupted=interrupted)


def _validate(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.seeds < 2:
        raise HPOError(
            f"--seeds must be at least 2 to measure seed-to-seed noise, but got {args.seeds}"
        )
    if args.workers < 1 or args.top_k < 1:
        raise HPOError("--workers and --top-k must be at least 1")
    study = load_existing_study(stored_name(args.study, args.study_name), args.storage)
    configs = configs_to_validate(study, trial=args.trial, top_k=args.top_k)
    for cfg in configs.values():  # every split, the test split included, before training
        preflight(cfg, needed=("train", "val", "test"))
    tracker = make_tracker(_tracking(study, args))  # a failure warns once; goes on untracked
    tracking = tracker.open_study(study, study.user_attrs.get("hpo.manifest", {})) or Tracking()
    if args.seeds < MIN_PAIRS:
        print(
            f"warning: {args.seeds} paired seeds can never show a difference beyond seed-to-seed "
            f"noise (the smallest permutation p they can give is {smallest_p(args.seeds):.3g}); "
            f"use {MIN_PAIRS} or more, {ADVISED_PAIRS} advised",
            file=sys.stderr,
        )
    per_config = validate(
        study,
        configs,
        seeds=args.seeds,
        workers=args.workers,
        progress=not args.no_progress,
        tracking=tracking,
    )
    out = write_report(study, report(study, per_config, configs), per_config)
    print(f"report in {out}; attached to study {study.study_name!r}", file=sys.stderr)
    where = tracker.close_study(study)
    if where:
        print(where, file=sys.stderr)
    return 0


def _tracking(study: optuna.Study, args: argparse.Namespace) -> Tracking:
    """--tracking, else the study's own tracking settings."""
    spec_tracking = study.user_attrs["hpo.spec"].get("tracking") or {}
    return resolve_tracking(
        args.tracking or spec_tracking.get("backend"),
        uri=args.tracking_uri or spec_tracking.get("uri"),
        project=spec_tracking.get("project"),
        study=study.study_name,
    )


if __name__ == "__main__":
    sys.exit(main())
