"""hpo.validate's report: the statistics of each comparison, its verdict (hpo.validation.stats), the
Markdown and the plot, attached to the study for the dashboard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
from scipy import stats

from hpo.artifacts import VALIDATION_HEADING, upload
from hpo.storage import runs_dir
from hpo.study_spec import ObjectiveSpec
from hpo.validation.sequential import look, looks
from hpo.validation.stats import adjust_pvalues, compare_paired, summarize, verdict

ATTR = "hpo.validate"


def test_metric(study: optuna.Study) -> str:
    """What the seeds are compared on: the objective's metric on the test split."""
    return ObjectiveSpec(**study.user_attrs["hpo.spec"]["objective"]).test_metric


def report(
    study: optuna.Study,
    per_config: dict[str, list[dict]],
    configs: dict[str, dict[str, Any]] | None = None,
    *,
    max_seeds: int | None = None,
    pairing_keys: tuple[str, ...] = (),
) -> dict:
    """The statistics, verdicts and winner's optimism of each config against the baseline, in
    the objective's metric on the test split, its direction followed. With max_seeds (a
    sequential validation of one config, hpo.validation.sequential), the verdict reads the
    boundary of the
    look where the seeds stopped. `pairing_keys`: the trainable's (hpo.trainable)."""
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    metric = study.user_attrs["hpo.spec"]["objective"]["metric"]  # what the trials' values are
    test = test_metric(study)
    base = per_config["baseline"]
    out: dict[str, Any] = {
        "study": study.study_name,
        "seeds": len(base),
        "metric": test,
        "configs": {},
        "comparisons": {},
    }
    for label, rows in per_config.items():
        names = sorted({m for r in rows for m in r if m.startswith(("test/", "val/"))})
        out["configs"][label] = {
            m: summarize([r[m] for r in rows])
            for m in names
            if all(m in r for r in rows)  # seeds stored by older versions lack val/bpb
        }
    labels = [label for label in per_config if label != "baseline"]
    for label in labels:
        cmp = compare_paired([r[test] for r in per_config[label]], [r[test] for r in base])
        number = int(label.removeprefix("trial_"))
        # the trial's value is in the study's metric: compare it with that metric's mean
        tuned = study.trials[number].value
        cmp["metric"] = metric
        cmp["tuning_value"] = tuned
        cmp["multi_seed_value"] = out["configs"][label][metric]["mean"]
        cmp["winners_optimism"] = cmp["multi_seed_value"] - tuned
        if configs is not None:
            cmp["unpaired"] = unpaired_keys(configs[label], configs["baseline"], pairing_keys)
        out["comparisons"][label] = cmp
    # the verdict reads the BH-adjusted p: with --top-k K, K comparisons share one baseline
    comparisons = [out["comparisons"][x] for x in labels]
    for cmp, p in zip(
        comparisons, adjust_pvalues([c["p_value"] for c in comparisons]), strict=True
    ):
        cmp["p_adjusted"] = p
        if max_seeds is not None:
            # one comparison: its p is the look's, the one number that stopped the seeds (the
            # permutation p above samples its own patterns beyond 13 seeds)
            cmp["sequential"] = sequential_summary(cmp, max_seeds, per_config, test)
            cmp["p_value"] = cmp["p_adjusted"] = cmp["sequential"]["p_value"]
        cmp["verdict"] = verdict(cmp, minimize=minimize)
    return out


def differences(per_config: dict[str, list[dict]], metric: str) -> list[float]:
    """The one comparison's differences in `metric`, config minus baseline, seed by seed."""
    (label,) = (k for k in per_config if k != "baseline")
    base = per_config["baseline"]
    return [r[metric] - b[metric] for r, b in zip(per_config[label], base, strict=True)]


def sequential_summary(
    cmp: dict, max_seeds: int, per_config: dict[str, list[dict]], metric: str
) -> dict:
    """Where the sequential test stopped: its looks, this look's p and boundary, settled early
    or not, and the repeated-confidence interval: the t-interval at this look's own level
    (1 - boundary), which keeps its coverage whatever look stopped. The plain 95% interval does
    not after an early stop: a look stops when the difference looks large, so the mean of the
    seeds it stopped at is biased away from 0 (the "winner's curse" of early stopping)."""
    diffs = differences(per_config, metric)
    at = look(diffs, max_seeds)
    n = len(diffs)
    half = math.inf
    if at.boundary > 0 and n > 1:
        half = float(stats.t.ppf(1 - at.boundary / 2, df=n - 1) * stats.sem(diffs))
    return {
        "looks": looks(max_seeds),
        "max_seeds": max_seeds,
        "p_value": at.p_value,
        "boundary": at.boundary,
        "stopped_early": at.stop and n < max_seeds,
        "rci_low": cmp["mean_diff"] - half,
        "rci_high": cmp["mean_diff"] + half,
    }


def unpaired_keys(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The settings that keep a shared seed from giving `a` and `b` the same initial weights
    and batches (`keys`: the trainable's pairing keys)."""
    return [k for k in keys if a.get(k) != b.get(k)]


def markdown(rep: dict) -> str:
    lines = [f"{VALIDATION_HEADING} ({rep['seeds']} paired seeds)", ""]
    for c in rep["comparisons"].values():
        if seq := c.get("sequential"):
            how = (
                f"settled after {rep['seeds']} of up to {seq['max_seeds']} seeds"
                if seq["stopped_early"]
                else f"all {seq['max_seeds']} seeds run"
            )
            lines += [
                f"Sequential: {how} (looks at {', '.join(map(str, seq['looks']))} seeds, "
                f"each with its own boundary for p so that the false-positive rate stays at "
                f"5%; `--fixed-seeds` runs all of them).",
                "",
            ]
            if seq["stopped_early"] and "rci_low" in seq:
                lines += [
                    "Stopped early, so the mean difference below is biased away from 0 (a look "
                    "stops when the difference looks large). The interval that keeps its "
                    f"coverage under the stopping rule (repeated-confidence, at this look's "
                    f"level 1 - {seq['boundary']:.3g}): [{seq['rci_low']:+.4f}, "
                    f"{seq['rci_high']:+.4f}].",
                    "",
                ]
    test = rep.get("metric", "test/loss")  # reports written before the seam compared loss
    others = [m for m in next(iter(rep["configs"].values())) if m != test]
    lines += [
        f"| config | {test} (mean ± sd) | 95% t-interval | {' | '.join(others)} |",
        "| --- | --- | --- |" + " --- |" * len(others),
    ]
    for label, s in rep["configs"].items():
        t = s[test]
        rest = " | ".join(f"{s[m]['mean']:.4f}" if m in s else "-" for m in others)
        lines.append(
            f"| {label} | {t['mean']:.4f} ± {t['std']:.4f} "
            f"| [{t['ci_low']:.4f}, {t['ci_high']:.4f}] | {rest} |"
        )
    for label, c in rep["comparisons"].items():
        d_z = c.get("d_z", c["cohens_d"])  # reports written before d_z have only cohens_d
        effect = "n/a (constant differences)" if d_z is None else f"{d_z:+.2f}"
        lines += [
            "",
            f"**{label} vs baseline**: {test} difference {c['mean_diff']:+.4f} "
            f"(95% t-interval [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]), "
            f"permutation p = {c['p_value']:.4f} (BH-adjusted {c['p_adjusted']:.4f}), "
            f"d_z = {effect}: {c['verdict']}.",
            f"Winner's optimism: tuning measured {c['metric']} {c['tuning_value']:.4f} on one "
            f"seed; over {rep['seeds']} seeds it averages {c['multi_seed_value']:.4f} "
            f"({c['winners_optimism']:+.4f}).",
        ]
        if c.get("unpaired"):
            lines.append(
                f"Pairing: {label} and the baseline differ in {', '.join(c['unpaired'])}, so a "
                "seed gives them different initial weights and batches; the pairing removes "
                "less seed noise than between configs of one shape."
            )
    return "\n".join(lines) + "\n"


def plot(per_config: dict[str, list[dict]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, rows in enumerate(per_config.values()):
        values = [r[metric] for r in rows]
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
    ax.set_ylabel(metric)
    ax.set_title(f"Per-seed {metric}, mean and 95% t-interval")
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


def write_report(study: optuna.Study, rep: dict, per_config: dict[str, list[dict]]) -> Path:
    """JSON, Markdown (also printed) and the plot under runs/<study>/validate/, attached to the
    study; returns the folder."""
    out = runs_dir() / study.study_name / "validate"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rep)
    (out / "validation.json").write_text(json.dumps(rep, indent=2))
    (out / "validation.md").write_text(text)
    plot(per_config, out / "validation.png", rep["metric"])
    attach(study, rep, out)
    print(text)
    return out
