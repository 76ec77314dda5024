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
from hpo import noise
from hpo.errors import HPOError
from hpo.flags import add_storage_flag, add_study_flags, stored_name
from hpo.record import TrialRecord
from hpo.sequential import look, looks
from hpo.stats import ADVISED_PAIRS, MIN_PAIRS, smallest_p
from hpo.storage import load_existing_study, runs_dir
from hpo.study_spec import TRACKERS, StudySpec
from hpo.tracking import Tracking, make_tracker, resolve_tracking, tracker_for
from hpo.validation_report import ATTR, differences, report, write_report
from trainers import TrainConfig, preflight, score_checkpoint, train
from trainers.cli import run_cli

SEED_BASE = 1000  # validation seeds are 1000, 1001, ...: never the tuning seed
MAX_TIED = 5  # the most trials validated by default: the best and those tied with it


@dataclass(frozen=True)
class Job:
    label: str  # "baseline" or "trial_12"
    config: dict[str, Any]
    seed: int
    key: str  # study user attr that holds the result
    workdir: str
    tracking: Tracking = field(default_factory=Tracking)  # W&B / MLflow run per (config, seed)


def configs_to_validate(
    study: optuna.Study, *, trial: int | None, top_k: int | None
) -> dict[str, TrainConfig]:
    """{label: config} for the chosen trials and the baseline. Raises HPOError when there is
    nothing to compare.

    Trials rank by their mean over seeds (hpo.noise; a trial with one seed by its value).
    Without --trial or --top-k: the best trial and those tied with it within the seed noise
    the study measured (up to MAX_TIED), or the best alone where it measured none."""
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
        measured = noise.measure(study)
        numbers = measured.tied()[:MAX_TIED] if top_k is None else measured.ranked()[:top_k]
        by_number = {t.number: t for t in complete}
        chosen = [by_number[n] for n in numbers]
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
    sequential: bool = False,
) -> dict[str, list[dict]]:
    """{label: one result row per seed, by seed}. Seeds stored in the study are read, not
    trained again. With `sequential` (one config against the baseline), seeds are added in rounds
    up to `seeds` and it stops at the first look of hpo.sequential that decides; the rows are
    those of the seeds up to that look."""
    rounds = looks(seeds) if sequential and len(configs) == 2 else [seeds]
    jobs = _jobs(study, configs, seeds, tracking)
    stored = study.user_attrs
    results = {j.key: stored[j.key] for j in jobs if j.key in stored}
    bar = tqdm(
        total=len(jobs),
        initial=len(results),
        unit="run",
        desc="validate",
        disable=not progress,
    )
    pool = None
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(threads,))
    try:
        for n in rounds:
            upto = [j for j in jobs if j.seed < SEED_BASE + n]
            # one seeded config under two labels (the best trial is the study's baseline, as
            # trial 0 of sampler.baseline_first can be) is trained once and stored under both
            twins: dict[str, list[Job]] = {}
            for j in upto:
                if j.key not in results:
                    twins.setdefault(json.dumps(j.config, sort_keys=True), []).append(j)
            first = {same[0].key: same for same in twins.values()}
            todo = [same[0] for same in twins.values()]
            done = pool.imap_unordered(run_job, todo) if pool else map(run_job, todo)
            for key, result in done:
                for j in first[key]:
                    study.set_user_attr(j.key, result)  # stored at once: a rerun skips it
                    results[j.key] = result
                    bar.update()
            per_config = {
                label: [results[j.key] for j in upto if j.label == label] for label in configs
            }
            if len(rounds) > 1 and look(differences(per_config), seeds).decided:
                bar.total = len(upto)  # settled: the rest of the seeds are not needed
                bar.refresh()
                break
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    return per_config


def _jobs(
    study: optuna.Study,
    configs: dict[str, TrainConfig],
    seeds: int,
    tracking: Tracking | None = None,
) -> list[Job]:
    """One job per (config, seed), by seed within each config; its key names the stored result
    by the seeded config's digest, so a changed config is never mistaken for a stored one."""
    root = runs_dir() / study.study_name / "validate"
    jobs = []
    for label, cfg in configs.items():
        for i in range(seeds):
            c = seeded(cfg, SEED_BASE + i)
            blob = json.dumps(c.to_dict(), sort_keys=True).encode()
            digest = hashlib.sha256(blob).hexdigest()[:10]
            workdir = str(root / "work" / f"{label}_{digest}")
            key = f"{ATTR}.{label}.{digest}"
            jobs.append(
                Job(label, c.to_dict(), SEED_BASE + i, key, workdir, tracking or Tracking())
            )
    return jobs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.validate", description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_storage_flag(p)
    p.add_argument(
        "--seeds",
        type=int,
        default=10,
        help="the most paired seeds per config (at least 2; 10 advised); a clear difference "
        "stops early (see --fixed-seeds)",
    )
    p.add_argument(
        "--fixed-seeds",
        action="store_true",
        help="run exactly --seeds seeds, with no look before the last (the sequential test "
        "spends some power on its early looks)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="validate this trial instead of the best")
    which.add_argument(
        "--top-k",
        type=int,
        help="validate the K best trials (default: the best, and the trials tied with it "
        f"within the seed noise the study measured, up to {MAX_TIED})",
    )
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
    if args.workers < 1 or (args.top_k is not None and args.top_k < 1):
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
    sequential = not args.fixed_seeds and len(looks(args.seeds)) > 1
    if sequential and len(configs) > 2:
        print(
            f"note: seeds stop early only when one config is compared with the baseline; "
            f"with {len(configs) - 1} configs all {args.seeds} seeds are run",
            file=sys.stderr,
        )
        sequential = False
    per_config = validate(
        study,
        configs,
        seeds=args.seeds,
        workers=args.workers,
        progress=not args.no_progress,
        tracking=tracking,
        sequential=sequential,
    )
    rep = report(study, per_config, configs, max_seeds=args.seeds if sequential else None)
    out = write_report(study, rep, per_config)
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
