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
from hpo.artifacts import VALIDATION_HEADING, upload
from hpo.errors import HPOError
from hpo.stats import adjust_pvalues, compare_paired, summarize, verdict
from hpo.storage import load_existing_study, runs_dir
from hpo.study_spec import TRACKERS, StudySpec
from hpo.tracking import Tracking, make_tracker, resolve_tracking, tracker_for
from trainers import TrainConfig, TrainerError, score_checkpoint, train

SEED_BASE = 1000  # validation seeds are 1000, 1001, ...: never the tuning seed
MIN_SEEDS_ADVISED = 5
ATTR = "hpo.validate"


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
    if "manifest" in t.user_attrs:
        return TrainConfig.from_dict(t.user_attrs["manifest"]["config"])
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


def report(study: optuna.Study, per_config: dict[str, list[dict]]) -> dict:
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    base = per_config["baseline"]
    out: dict[str, Any] = {
        "study": study.study_name,
        "seeds": len(base),
        "configs": {},
        "comparisons": {},
    }
    for label, rows in per_config.items():
        out["configs"][label] = {
            m: summarize([r[m] for r in rows]) for m in ("test/loss", "test/bpb", "val/loss")
        }
    labels = [label for label in per_config if label != "baseline"]
    for label in labels:
        cmp = compare_paired(
            [r["test/loss"] for r in per_config[label]], [r["test/loss"] for r in base]
        )
        cmp["verdict"] = verdict(cmp, minimize=minimize)
        number = int(label.removeprefix("trial_"))
        tuned = study.trials[number].value
        cmp["tuning_val_loss"] = tuned
        cmp["multi_seed_val_loss"] = out["configs"][label]["val/loss"]["mean"]
        cmp["winners_optimism"] = cmp["multi_seed_val_loss"] - tuned
        out["comparisons"][label] = cmp
    for label, p in zip(
        labels, adjust_pvalues([out["comparisons"][x]["p_value"] for x in labels]), strict=True
    ):
        out["comparisons"][label]["p_adjusted"] = p
    return out


def markdown(rep: dict) -> str:
    lines = [
        f"{VALIDATION_HEADING} ({rep['seeds']} paired seeds)",
        "",
        "| config | test loss (mean ± sd) | 95% CI | test bpb | val loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, s in rep["configs"].items():
        t = s["test/loss"]
        lines.append(
            f"| {label} | {t['mean']:.4f} ± {t['std']:.4f} "
            f"| [{t['ci_low']:.4f}, {t['ci_high']:.4f}] "
            f"| {s['test/bpb']['mean']:.4f} | {s['val/loss']['mean']:.4f} |"
        )
    for label, c in rep["comparisons"].items():
        lines += [
            "",
            f"**{label} vs baseline**: test loss difference {c['mean_diff']:+.4f} "
            f"(95% CI [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]), "
            f"permutation p = {c['p_value']:.4f} (BH-adjusted {c['p_adjusted']:.4f}), "
            f"Cohen's d = {c['cohens_d']:+.2f}: {c['verdict']}.",
            f"Winner's optimism: tuning measured val loss {c['tuning_val_loss']:.4f} on one seed; "
            f"over {rep['seeds']} seeds it averages {c['multi_seed_val_loss']:.4f} "
            f"({c['winners_optimism']:+.4f}).",
        ]
    return "\n".join(lines) + "\n"


def plot(per_config: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, rows in enumerate(per_config.values()):
        values = [r["test/loss"] for r in rows]
        s = summarize(values)
        ax.scatter([i] * len(values), values, alpha=0.6)
        ax.errorbar(
            [i + 0.15],
            [s["mean"]],
            yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]],
            fmt="o",
            color="black",
            capsize=5,
        )
    ax.set_xticks(range(len(per_config)), list(per_config))
    ax.set_ylabel("test loss (nats/token)")
    ax.set_title("Per-seed test loss, mean and 95% BCa interval")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def attach(study: optuna.Study, rep: dict, out: Path) -> None:
    """User attr, artifacts and a section of the study's note, for the dashboard."""
    import optuna_dashboard

    study.set_user_attr(f"{ATTR}.report", json.loads(json.dumps(rep, default=float)))
    upload(study, [out / "validation.png", out / "validation.md"])
    note = optuna_dashboard.get_note(study) or ""
    note = note.split(VALIDATION_HEADING)[0].rstrip()
    optuna_dashboard.save_note(
        study, (note + "\n\n" if note else "") + (out / "validation.md").read_text()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpo.validate", description=__doc__.split("\n")[0])
    p.add_argument("--study", help="study name (default: the one run last here)")
    p.add_argument(
        "--storage", help="database URL (default: $HPO_STORAGE or sqlite:///runs/hpo.db)"
    )
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
    )  # fmt: skip
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.seeds < 2:
            raise HPOError(
                f"--seeds must be at least 2 to measure seed-to-seed noise, but got {args.seeds}"
            )
        if args.workers < 1 or args.top_k < 1:
            raise HPOError("--workers and --top-k must be at least 1")
        study = load_existing_study(args.study, args.storage)
        configs = configs_to_validate(study, trial=args.trial, top_k=args.top_k)
        spec_tracking = study.user_attrs["hpo.spec"].get("tracking") or {}
        tracking = resolve_tracking(
            args.tracking or spec_tracking.get("backend"),
            uri=args.tracking_uri or spec_tracking.get("uri"),
            project=spec_tracking.get("project"),
            study=study.study_name,
        )
    except HPOError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tracker = make_tracker(tracking)  # a failure warns once; validation goes on untracked
    tracking = tracker.open_study(study, study.user_attrs.get("hpo.manifest", {})) or Tracking()
    if args.seeds < MIN_SEEDS_ADVISED:
        print(
            f"warning: {args.seeds} seeds give a wide, unreliable interval (the BCa bootstrap "
            "estimates bias and skew from the sample itself); "
            f"use {MIN_SEEDS_ADVISED} or more, 10 advised",
            file=sys.stderr,
        )
    try:
        per_config = validate(
            study,
            configs,
            seeds=args.seeds,
            workers=args.workers,
            progress=not args.no_progress,
            tracking=tracking,
        )
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: finished seeds are stored; rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
    rep = report(study, per_config)
    out = runs_dir() / study.study_name / "validate"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rep)
    (out / "validation.json").write_text(json.dumps(rep, indent=2))
    (out / "validation.md").write_text(text)
    plot(per_config, out / "validation.png")
    attach(study, rep, out)
    print(text)
    print(f"report in {out}; attached to study {study.study_name!r}", file=sys.stderr)
    where = tracker.close_study(study)
    if where:
        print(where, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
