"""The analysis plots, each saved as interactive HTML (plotly) and as PNG (matplotlib).

Optuna's own visualizations wherever one exists; two small ones of ours: importance with
intervals, and the learning curves of the best trials.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import optuna
import optuna.visualization as vis
import optuna.visualization.matplotlib as vis_mpl
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import FrozenTrial


def save_all(
    study: optuna.Study,
    top: Sequence[FrozenTrial],
    importance: pd.DataFrame | None,
    params: list[str],
    out: Path,
) -> list[Path]:
    """Write every plot that the study's data supports; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, tuple[Callable, Callable]] = {
        "optimization_history": (
            lambda: vis.plot_optimization_history(study),
            lambda: vis_mpl.plot_optimization_history(study),
        ),
        "intermediate_values": (
            lambda: vis.plot_intermediate_values(study),
            lambda: vis_mpl.plot_intermediate_values(study),
        ),
        "edf": (lambda: vis.plot_edf(study), lambda: vis_mpl.plot_edf(study)),
        "learning_curves": (lambda: _curves_plotly(top), lambda: _curves_mpl(top)),
    }
    if params:
        plots["parallel_coordinate"] = (
            lambda: vis.plot_parallel_coordinate(study, params=params),
            lambda: vis_mpl.plot_parallel_coordinate(study, params=params),
        )
        plots["slice"] = (
            lambda: vis.plot_slice(study, params=params),
            lambda: vis_mpl.plot_slice(study, params=params),
        )
    if len(params) >= 2:
        pair = params[:2]
        plots["contour"] = (
            lambda: vis.plot_contour(study, params=pair),
            lambda: vis_mpl.plot_contour(study, params=pair),
        )
    if importance is not None:
        plots["importance"] = (
            lambda: _importance_plotly(importance),
            lambda: _importance_mpl(importance),
        )
    written = []
    # a conditional parameter can have a single value among the trials a plot shows (Adam's
    # L2 penalty when the others are SGD's): Optuna warns on stderr, the plot shows it anyway
    quiet = logging.getLogger("optuna.visualization")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name, (interactive, static) in plots.items():
            written += _save(name, interactive, static, out)
    finally:
        quiet.setLevel(level)
    return written


def _save(name: str, interactive: Callable, static: Callable, out: Path) -> list[Path]:
    """One plot as HTML and PNG."""
    interactive().write_html(out / f"{name}.html", include_plotlyjs="directory")
    axes = static()
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    with warnings.catch_warnings():  # "tight layout not applied" on crowded axes: harmless
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return [out / f"{name}.html", out / f"{name}.png"]


def _labels(imp: pd.DataFrame) -> list[str]:
    """Parameter names, with the condition each was scored in when there are several
    (importances compare only within one condition, hpo.analysis.importance)."""
    if "scope" not in imp or imp["scope"].nunique() < 2:
        return list(imp.index)
    return [f"{name} [{scope}]" for name, scope in zip(imp.index, imp["scope"], strict=True)]


def _importance_plotly(imp: pd.DataFrame) -> go.Figure:
    imp = imp.iloc[::-1]  # most important at the top
    fig = go.Figure(
        go.Bar(
            x=imp["importance"],
            y=_labels(imp),
            orientation="h",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": imp["high"] - imp["importance"],
                "arrayminus": imp["importance"] - imp["low"],
            },
        )
    )
    fig.update_layout(
        title="Hyperparameter importance (90% interval over resamples)", xaxis_title="importance"
    )
    return fig


def _importance_mpl(imp: pd.DataFrame):
    imp = imp.iloc[::-1]
    _, ax = plt.subplots(figsize=(7, 0.5 * len(imp) + 1.5))
    ax.barh(
        _labels(imp),
        imp["importance"],
        xerr=[imp["importance"] - imp["low"], imp["high"] - imp["importance"]],
        capsize=4,
    )
    ax.set_title("Hyperparameter importance (90% interval over resamples)")
    ax.set_xlabel("importance")
    return ax


def _curves_plotly(top: Sequence[FrozenTrial]) -> go.Figure:
    fig = go.Figure()
    for t in top:
        steps = sorted(t.intermediate_values)
        fig.add_trace(
            go.Scatter(
                x=steps, y=[t.intermediate_values[s] for s in steps], name=f"trial {t.number}"
            )
        )
    fig.update_layout(
        title="Learning curves of the best trials", xaxis_title="step", yaxis_title="objective"
    )
    return fig


def _curves_mpl(top: Sequence[FrozenTrial]):
    _, ax = plt.subplots(figsize=(7, 4))
    for t in top:
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], label=f"trial {t.number}")
    ax.set_title("Learning curves of the best trials")
    ax.set_xlabel("step")
    ax.set_ylabel("objective")
    if top:
        ax.legend(fontsize="small")
    return ax
