"""What mattered in a study: python -m hpo.analyze --study lr_sweep

Prints importance with intervals, range warnings, sensitivity and pruning statistics; writes
plots (HTML + PNG), summary.md and analysis.json under runs/<study>/report/, and attaches the
plots and summary to the study (artifacts and a note) so optuna-dashboard shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo import diagnostics, plots
from hpo.artifacts import VALIDATION_HEADING, upload
from hpo.errors import HPOError
from hpo.importance import EVALUATORS, importance_intervals
from hpo.storage import load_existing_study, runs_dir

MIN_TRIALS_FOR_IMPORTANCE = 8


def analyze(
    study: optuna.Study, *, evaluator: str = "fanova", resamples: int = 20, out: Path | None = None
) -> dict:
    """Run every analysis the study's trials allow; return the results (also written to `out`)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    notes: list[str] = []
    importance = None
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        notes.append(
            f"importance skipped: {len(complete)} completed trials, "
            f"{evaluator} needs at least {MIN_TRIALS_FOR_IMPORTANCE} to say anything"
        )
    else:
        try:
            importance = importance_intervals(
                complete, direction=study.direction, evaluator=evaluator, n_resamples=resamples
            )
        except ValueError as e:
            notes.append(f"importance skipped: {e}")
    unstable = importance is not None and bool(importance["unstable"].any())
    if unstable:
        notes.append(
            "the importance ranking is unstable where intervals overlap (marked *); "
            "more trials would settle it"
        )
    top = diagnostics.top_trials(trials, minimize=minimize)
    params = (
        list(importance.index)
        if importance is not None
        else sorted({p for t in complete for p in t.params})
    )
    result = {
        "study": study.study_name,
        "trials": {
            state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
        },
        "best": {"number": top[0].number, "value": top[0].value, "params": top[0].params}
        if top
        else None,
        "importance": None
        if importance is None
        else importance.reset_index().to_dict(orient="records"),
        "range_warnings": diagnostics.range_warnings(trials, minimize=minimize),
        "sensitivity": diagnostics.sensitivity(trials).reset_index().to_dict(orient="records"),
        "pruning": diagnostics.pruning_stats(trials),
        "notes": notes,
    }
    if out is not None:
        files = plots.save_all(study, top[:10], importance, params[:6], out) if complete else []
        result["files"] = [str(f) for f in files]
        (out / "analysis.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "summary.md").write_text(markdown(result, importance))
    return result


def markdown(result: dict, importance: pd.DataFrame | None) -> str:
    lines = [f"# Analysis of {result['study']}", ""]
    counts = ", ".join(f"{n} {s}" for s, n in result["trials"].items() if n)
    lines.append(f"Trials: {counts}.")
    if result["best"]:
        best = result["best"]
        lines.append(f"Best: trial {best['number']}, value {best['value']:.4f}.")
        lines += ["", "| parameter | best value |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in best["params"].items()
        ]
    if importance is not None:
        lines += [
            "",
            "## Importance (90% interval)",
            "",
            "| rank | parameter | importance | interval |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in importance.iterrows():
            mark = " *" if row["unstable"] else ""
            lines.append(
                f"| {row['rank']}{mark} | {name} | {row['importance']:.3f} "
                f"| [{row['low']:.3f}, {row['high']:.3f}] |"
            )
    if result["range_warnings"]:
        lines += ["", "## Range warnings", ""] + [f"- {w}" for w in result["range_warnings"]]
    if result["sensitivity"]:
        lines += [
            "",
            "## Sensitivity (Spearman with the objective)",
            "",
            "| parameter | rho | p |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {r['param']} | {r['spearman']:+.2f} | {r['p_value']:.2g} |"
            for r in result["sensitivity"]
        ]
    p = result["pruning"]
    lines += [
        "",
        "## Pruning",
        "",
        f"{p['pruned']} trials pruned; {p['saved']:.0%} of training steps saved "
        f"({p['steps_trained']:,} trained of {p['steps_without_pruning']:,}).",
    ]
    if p["pruned_per_step"]:
        lines.append(
            "Pruned at step: "
            + ", ".join(f"{s}: {n}" for s, n in p["pruned_per_step"].items())
            + "."
        )
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def attach(study: optuna.Study, out: Path, summary: str) -> int:
    """Upload the PNG plots and the summary as study artifacts (replacing earlier uploads of
    the same file) and make the summary the study's note. Returns the number of files."""
    import optuna_dashboard

    files = [*sorted(out.glob("*.png")), out / "summary.md"]
    upload(study, files)
    validation = (optuna_dashboard.get_note(study) or "").partition(VALIDATION_HEADING)
    kept = validation[1] + validation[2]  # hpo.validate's section of the note stays
    optuna_dashboard.save_note(study, summary + ("\n" + kept if kept else ""))
    return len(files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpo.analyze", description=__doc__.split("\n")[0])
    p.add_argument("--study", help="study name (default: the one run last here)")
    p.add_argument(
        "--storage", help="database URL (default: $HPO_STORAGE or sqlite:///runs/hpo.db)"
    )
    p.add_argument("--evaluator", choices=EVALUATORS, default="fanova")
    p.add_argument(
        "--resamples", type=int, default=20, help="bootstrap resamples for importance intervals"
    )
    p.add_argument("--out", help="report folder (default: runs/<study>/report)")
    p.add_argument("--no-upload", action="store_true", help="do not attach the report to the study")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.time()
    try:
        if args.resamples < 1:
            raise HPOError(f"--resamples must be at least 1, but got {args.resamples}")
        study = load_existing_study(args.study, args.storage)
    except HPOError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else runs_dir() / study.study_name / "report"
    result = analyze(study, evaluator=args.evaluator, resamples=args.resamples, out=out)
    summary = (out / "summary.md").read_text()
    print(summary)
    if not args.no_upload:
        n = attach(study, out, summary)
        print(f"attached {n} files and a note to study {study.study_name!r}", file=sys.stderr)
    print(f"report in {out} ({time.time() - start:.1f}s)", file=sys.stderr)
    return 0 if result["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
