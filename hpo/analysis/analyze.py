"""What mattered in a study: the core of python -m hpo.analyze (its door: hpo.cli.analyze).

Prints importance with intervals (each parameter scored within its condition,
hpo.analysis.importance),
the conditions compared, range warnings (in study-YAML keys, inside each bound's domain),
sensitivity and pruning statistics; writes plots (HTML + PNG), summary.md and analysis.json
under runs/<study>/report/, and attaches the plots and summary to the study (artifacts and a
note) so optuna-dashboard shows them. Under pruning, trials are compared at a common rung, pruned
ones included (--values final: completed trials only); the summary says which.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo import noise
from hpo.analysis import diagnostics, plots
from hpo.analysis.importance import (
    EVALUATORS,
    METHOD,
    MIN_TRIALS,
    N_RESAMPLES,
    condition_summary,
    importance_intervals,
    unscored,
)
from hpo.artifacts import VALIDATION_HEADING, upload
from hpo.errors import UsageError
from hpo.noise import NoiseReport
from hpo.record import pruning_stats
from hpo.storage import load_existing_study, runs_dir, stored_name

VALUES = ("rung", "final")  # --values: what importance, sensitivity and range advice compare


def analyze(
    study: optuna.Study,
    *,
    evaluator: str = "fanova",
    resamples: int = N_RESAMPLES,
    out: Path | None = None,
    values: str = "rung",
) -> dict:
    """Run every analysis the study's trials allow; return the results (also written to `out`).

    `values="rung"` compares trials at a common rung when pruned trials reached one
    (diagnostics.comparable_values); "final" uses completed trials' final values only.
    """
    if values not in VALUES:
        raise ValueError(f"unknown {values=}; valid: {', '.join(VALUES)}")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    compared = diagnostics.comparable_values(
        trials, minimize=minimize, final_only=values == "final"
    )
    importance, notes = _importance(compared, study.direction, evaluator, resamples)
    dropped = diagnostics.pruned_before(trials, compared.step)
    if dropped:
        where = f"before step {compared.step}" if compared.step is not None else "(final values)"
        notes.append(
            f"{dropped} pruned trials are left out {where} of importance, sensitivity and range "
            "advice: chosen by their outcome, the trials compared understate what pruning "
            "selected on (the learning rate, most often)"
        )
    if not complete:
        notes.insert(0, "no trial has completed yet: there is no best trial to report")
    top = diagnostics.top_trials(trials, minimize=minimize)
    seeds = noise.report(study)
    warnings = diagnostics.range_warnings(compared.trials, minimize=minimize)
    result = {
        "study": study.study_name,
        "trials": {
            state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
        },
        "best": _best(trials, top, seeds),
        "seed_noise": seeds.to_json() if seeds else None,
        "compared": {
            "step": compared.step,
            "trials": len(compared.trials),
            "complete": compared.n_complete,
            "pruned": compared.n_pruned,
            "description": compared.describe(),
        },
        "importance_method": f"{evaluator}, {resamples} bootstrap resamples; {METHOD}",
        "importance": None
        if importance is None
        else importance.reset_index().to_dict(orient="records"),
        "conditions": condition_summary(compared.trials, minimize=minimize).to_dict("records"),
        "range_warnings": [str(w) for w in warnings],
        "sensitivity": diagnostics.sensitivity(compared.trials)
        .reset_index()
        .to_dict(orient="records"),
        "pruning": pruning_stats(trials),
        "notes": notes,
    }
    if out is not None:
        _write(study, result, importance, top, out)
    return result


def _write(
    study: optuna.Study, result: dict, importance: pd.DataFrame | None, top: list, out: Path
) -> None:
    """Plots (when a trial has completed), analysis.json and summary.md, into `out`."""
    out.mkdir(parents=True, exist_ok=True)  # the plots are not always there to make it
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    names = (
        list(dict.fromkeys(importance.index))  # a parameter may be scored in two conditions
        if importance is not None
        else sorted({p for t in complete for p in t.params})
    )
    params = _plot_params(names, complete)
    files = plots.save_all(study, top[:10], importance, params[:6], out) if complete else []
    result["files"] = [str(f) for f in files]
    (out / "analysis.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "summary.md").write_text(markdown(result, importance))


def _plot_params(names: list[str], complete) -> list[str]:
    """The parameters Optuna's plots can show (those of completed trials), most important
    first, then the next one that shares trials with it, so that the contour plot of the first
    two has points (two conditional parameters may never meet)."""
    names = [n for n in names if any(n in t.params for t in complete)]
    for i, name in enumerate(names[1:], start=1):
        if any(names[0] in t.params and name in t.params for t in complete):
            return [names[0], name, *names[1:i], *names[i + 1 :]]
    return names


def _importance(
    compared: diagnostics.TrialValues, direction, evaluator: str, resamples: int
) -> tuple[pd.DataFrame | None, list[str]]:
    """Importance intervals on the compared values, and notes on what was left out."""
    n = len(compared.trials)
    what = "completed trials" if compared.step is None else f"trials at step {compared.step}"
    if n < MIN_TRIALS:
        return None, [
            f"importance skipped: {n} {what}, {evaluator} needs at least {MIN_TRIALS} "
            "to say anything"
        ]
    try:
        importance = importance_intervals(
            compared.trials, direction=direction, evaluator=evaluator, n_resamples=resamples
        )
    except ValueError as e:
        return None, [f"importance skipped: {e}"]
    notes = [f"{name} not scored: {why}" for name, why in unscored(compared.trials).items()]
    if importance["unstable"].any():
        notes.append(
            "the importance ranking is unstable where intervals overlap (marked *); "
            "more trials would settle it"
        )
    return importance, notes


def _best(trials: list, top: list, seeds: NoiseReport | None) -> dict | None:
    """The best trial: on its mean over seeds where the study re-evaluated (hpo.noise), else
    on its value."""
    if seeds is not None:
        params = trials[seeds.best].params
        return {"number": seeds.best, "value": seeds.mean, "params": params}
    if not top:
        return None
    return {"number": top[0].number, "value": top[0].value, "params": top[0].params}


def markdown(result: dict, importance: pd.DataFrame | None) -> str:
    lines = [f"# Analysis of {result['study']}", ""]
    counts = ", ".join(f"{n} {s}" for s, n in result["trials"].items() if n)
    lines.append(f"Trials: {counts}.")
    if result["best"]:
        best = result["best"]
        if result["seed_noise"]:
            # chosen on its mean over seeds: with its spread, and the trials tied with it
            lines += [f"- {line}" for line in NoiseReport(**result["seed_noise"]).lines()]
        else:
            lines.append(f"Best: trial {best['number']}, value {best['value']:.4f}.")
        lines += ["", "| parameter | best value |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in best["params"].items()
        ]
    else:
        lines.append("No trial has completed yet.")
    lines += [
        "",
        "Importance, conditions, range warnings and sensitivity compare "
        f"{result['compared']['description']}.",
    ]
    if importance is not None:
        lines += _importance_lines(result, importance)
    if len(result["conditions"]) > 1:
        lines += [
            "",
            "## Conditions (trials with the same parameters)",
            "",
            "| condition | trials | best | median |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {c['condition']} | {c['trials']} | {c['best']:.4f} | {c['median']:.4f} |"
            for c in result["conditions"]
        ]
    if result["range_warnings"]:
        lines += ["", "## Range warnings", ""] + [f"- {w}" for w in result["range_warnings"]]
    if result["sensitivity"]:
        lines += [
            "",
            "## Sensitivity (Spearman with the objective)",
            "",
            "| parameter | rho | p | trials |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['param']} | {r['spearman']:+.2f} | {r['p_value']:.2g} | {r['n']} |"
            for r in result["sensitivity"]
        ]
    lines += _pruning_lines(result["pruning"])
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _importance_lines(result: dict, importance: pd.DataFrame) -> list[str]:
    lines = [
        "",
        "## Importance (90% interval)",
        "",
        f"Method: {result['importance_method']}. Importances add up to 1 within a condition and "
        "compare only there; the conditions themselves are compared below.",
    ]
    for scope, rows in importance.groupby("scope", sort=False):
        lines += [
            "",
            f"### Scored on: {scope} ({rows['n_trials'].iloc[0]} trials)",
            "",
            "| rank | parameter | importance | interval | rank interval | above the next |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in rows.iterrows():
            mark = " *" if row["unstable"] else ""
            above = "" if pd.isna(row["outranks_next"]) else f"{row['outranks_next']:.0%}"
            lines.append(
                f"| {row['rank']}{mark} | {name} | {row['importance']:.3f} "
                f"| [{row['low']:.3f}, {row['high']:.3f}] "
                f"| {row['rank_low']}-{row['rank_high']} | {above} |"
            )
        failed, total = int(rows["failed"].iloc[0]), int(rows["resamples"].iloc[0])
        if failed:
            lines += [
                "",
                f"{failed} of {total} resamples failed (a parameter took one value "
                "in them) and are left out of these intervals.",
            ]
    lines += [
        "",
        "\\* the order against a neighbour is not settled: fewer than 90% of the resamples "
        "put this parameter above the next one down (or the one above above it).",
    ]
    return lines


def _pruning_lines(p: dict) -> list[str]:
    lines = [
        "",
        "## Pruning",
        "",
        f"{p['pruned']} trials pruned; {p['saved']:.0%} of training {p['unit']} saved "
        f"({p['trained']:,} trained of {p['without_pruning']:,}).",
    ]
    if p["pruned_per_step"]:
        lines.append(
            "Pruned at step: "
            + ", ".join(f"{s}: {n}" for s, n in p["pruned_per_step"].items())
            + "."
        )
    return lines


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


@dataclass(frozen=True)
class AnalyzeRequest:
    """What `hpo.analyze` is asked for: each field means its flag."""

    study: str | None = None  # None: the study run last on this machine
    study_name: str | None = None
    storage: str | None = None
    evaluator: str = "fanova"
    resamples: int = N_RESAMPLES
    values: str = "rung"
    out: str | None = None  # None: runs/<study>/report
    upload: bool = True


@dataclass(frozen=True)
class Analysis:
    """What analyze_study did: the results, the summary it wrote, where, and how many files it
    attached to the study (None: not asked to)."""

    study_name: str
    result: dict
    summary: str
    out: Path
    attached: int | None


def analyze_study(
    request: AnalyzeRequest, show: Callable[[str], None] = lambda summary: None
) -> Analysis:
    """Analyze the study the request names: write the report, `show` its summary, then attach
    both to the study (so that a failed upload still leaves the summary shown). Raises
    UsageError for bad input."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if request.resamples < 1:
        raise UsageError(f"--resamples must be at least 1, but got {request.resamples}")
    if request.evaluator not in EVALUATORS:
        raise UsageError(f"unknown evaluator {request.evaluator!r}; valid: {', '.join(EVALUATORS)}")
    study = load_existing_study(stored_name(request.study, request.study_name), request.storage)
    out = Path(request.out) if request.out else runs_dir() / study.study_name / "report"
    result = analyze(
        study,
        evaluator=request.evaluator,
        resamples=request.resamples,
        out=out,
        values=request.values,
    )
    summary = (out / "summary.md").read_text()
    show(summary)
    attached = attach(study, out, summary) if request.upload else None
    return Analysis(study.study_name, result, summary, out, attached)
