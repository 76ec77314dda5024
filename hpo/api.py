"""hpo from Python or a notebook: tune any training function, then prove its winner.

    import hpo

    study = hpo.tune(
        train,                                         # def train(config, run): ... (hpo.seam)
        space={"optimizer": {"lr": [1e-4, 1e-1]}, my_suggest: {}},   # hpo's spaces and yours
        config={"train.max_steps": 300, "train.eval_interval": 30},  # fixed settings
        objective="val/accuracy", direction="maximize",
        baseline={"optim.lr": 1e-3},                   # what hpo.validate_winner compares with
        trials=30,
    )
    report = hpo.validate_winner(study, seeds=10)      # paired seeds on the test split

Both build what the commands build (a study spec, a RunRequest / ValidateRequest) and call the
same core: the study lands in the same storage (`storage=`, $HPO_STORAGE, or
sqlite:///runs/hpo.db), where hpo.analyze, hpo.dashboard and the other commands read it. A
function defined in a notebook runs in this process only (one worker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from hpo.session import RunRequest, load_request, open_study, run_study
from hpo.study_spec import parse_spec
from hpo.trainable import Trainable, register
from hpo.trial_loop import quiet_optuna
from hpo.validation.validate import ValidateRequest, validate_study

Space = dict[Any, dict[str, Any] | None] | Callable[..., dict[str, Any]]


def tune(
    train: Callable[..., None] | Trainable | str,
    *,
    space: Space,
    config: dict[str, Any] | None = None,
    objective: str = "val/loss",
    direction: str = "minimize",
    trials: int = 50,
    baseline: dict[str, Any] | None = None,
    sampler: str | dict[str, Any] = "tpe",
    pruner: str | dict[str, Any] = "sha",
    seed: int = 0,
    study_name: str | None = None,
    storage: str | None = None,
    workers: int = 1,
    timeout: float | None = None,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    verbose: bool = False,
    description: str = "",
) -> optuna.Study:
    """Tune `train` (a function train(config, run), a Trainable, or "module:function") and
    return the study. Rerun with the same study_name and storage to resume it: `trials` is the
    total.

    space: {space: bounds}, each space one of hpo's (search_spaces: "optimizer", "schedule",
    ...) or a suggest(trial, **bounds) function of yours (or its "module:function"); or just
    your suggest function. config: fixed settings (dotted keys) every trial gets. objective and
    direction: the metric train reports ({split}/{name}) and which way is better. sampler and
    pruner: a name, or their study-YAML mapping. tracking: "wandb" or "mlflow" (at
    tracking_uri). Raises UsageError for bad input."""
    quiet_optuna(verbose)
    entry = train if isinstance(train, str) else register(train)
    spaces = space if isinstance(space, dict) else {space: {}}
    raw = {
        "description": description or f"{entry}, tuned with hpo.tune",
        "objective": {"metric": objective, "direction": direction},
        "trials": trials,
        "search_space": {
            (name if isinstance(name, str) else register(name)): bounds
            for name, bounds in spaces.items()
        },
        "trainer": {"entry": entry, **(config or {})},
        "sampler": {"name": sampler} if isinstance(sampler, str) else sampler,
        "pruner": {"name": pruner} if isinstance(pruner, str) else pruner,
        "baseline": baseline,
    }
    name = study_name or _default_name(entry)
    spec = parse_spec(raw, name=name)
    request = RunRequest(
        study=name,
        spec=spec,
        study_name=name,
        trials=trials,
        timeout=timeout,
        seed=seed,
        workers=workers,
        storage=storage,
        tracking=tracking,
        tracking_uri=tracking_uri,
        verbose=verbose,
    )
    study, plan = open_study(request, load_request(request))
    run_study(study, plan, progress=progress)
    return study


def validate_winner(
    study: optuna.Study | str,
    *,
    seeds: int = 10,
    storage: str | None = None,
    trial: int | None = None,
    top_k: int | None = None,
    fixed_seeds: bool = False,
    workers: int = 1,
    tracking: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`python -m hpo.validate` from Python: the study's best trial (or `trial`, or the
    `top_k` best) against its baseline on paired seeds, scored on the test split, with
    sequential stopping. Returns the report (also written under runs/<study>/validate/)."""
    request = ValidateRequest(
        study=study if isinstance(study, str) else study.study_name,
        storage=storage,
        seeds=seeds,
        fixed_seeds=fixed_seeds,
        trial=trial,
        top_k=top_k,
        workers=workers,
        progress=progress,
        tracking=tracking,
    )
    return validate_study(request, study=None if isinstance(study, str) else study)


def _default_name(entry: str) -> str:
    """A study named after the module its function lives in ("digits"), or the function."""
    module, _, function = entry.partition(":")
    last = module.rsplit(".", 1)[-1]
    return function.rsplit(".", 1)[-1] if last == "__main__" else last
