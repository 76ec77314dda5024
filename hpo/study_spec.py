"""Studies are data: a YAML file validated against this schema, which rejects unknown keys.

    description: what the study is for
    objective: {metric: val/loss, direction: minimize}    # any {split}/{name} a trainer reports
    trials: 100                      # default total; --trials overrides
    search_space: {optimizer: {lr: [1.0e-4, 1.0e-2]}, schedule: {}}   # or "mypkg.space:suggest"
    trainer: {entry: mypkg.train:train, train.max_steps: 600}   # its fixed settings (dotted)
    sampler: {name: tpe, n_startup_trials: 10}
    pruner: {name: hyperband, reduction_factor: 3}
    baseline: {optim.lr: 1.0e-3}      # what hpo.validate compares the winner against
    noise: {seeds: 2, max_share: 0.15, stop_below_noise: true}   # optional: hpo.noise

`trainer.entry` names the training function ("module:function", hpo.trainable); without it the
study trains the built-in GPT (hpo.gpt). `load_study_spec` finds the file, parses and checks
everything a run will need (the entry imports and takes (config, run), every config key, every
search-space bound, by dry-running the spaces in memory) before anything is stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import optuna
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from hpo import space
from hpo.errors import UsageError
from hpo.trainable import (
    BUILTIN_ENTRY,
    SEED_KEY,
    Trainable,
    load_trainable,
    parse_value,
    steps_of,
)

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp")
PRUNERS = ("hyperband", "sha", "median", "none")
SCHEDULERS = ("asha", "hyperband", "median", "fifo", "pbt", "pb2")  # --backend ray
METRIC = re.compile(r"^[A-Za-z0-9_.-]+/\S+$")  # {split}/{name}: val/loss, val/f1_macro
TRACKERS = ("none", "wandb", "mlflow")  # --tracking, the `tracking:` key
ENTRY = "entry"  # the key of `trainer:` that names the training function


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectiveSpec(_Strict):
    metric: str = "val/loss"  # what the trainer reports at each evaluation: {split}/{name}
    direction: Literal["minimize", "maximize"] = "minimize"

    @pydantic.field_validator("metric")
    @classmethod
    def _split_and_name(cls, metric: str) -> str:
        if not METRIC.match(metric):
            raise ValueError(f"a metric is named {{split}}/{{name}} (val/accuracy), not {metric!r}")
        if metric.startswith("test/"):
            raise ValueError(
                "the test split is hpo.validate's alone: tune on a validation metric (val/...)"
            )
        return metric

    @property
    def test_metric(self) -> str:
        """The same metric on the test split: what hpo.validate compares."""
        return "test/" + self.metric.split("/", 1)[1]

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    def best(self, values: Iterable[float]) -> float:
        return min(values) if self.minimize else max(values)

    @property
    def worst(self) -> float:
        """Worse than any value a trial can report."""
        return math.inf if self.minimize else -math.inf


class SamplerSpec(_Strict):
    name: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    n_startup_trials: int = Field(10, ge=0)  # random trials before the model-based sampler starts
    seed: int = 0
    # the study's baseline as its first trial: the search starts from a known point
    baseline_first: bool = False


class PrunerSpec(_Strict):
    name: Literal[PRUNERS] = "hyperband"  # type: ignore[valid-type]
    reduction_factor: int = Field(3, ge=2)
    # the first rung: after this many evaluations, or at min_resource steps where that is set
    min_evaluations: int = Field(1, ge=1)
    min_resource: int | None = Field(None, ge=1)  # steps
    n_startup_trials: int = Field(5, ge=0)  # median only


class TrackingSpec(_Strict):
    """`tracking: wandb`, or a mapping; --tracking and --tracking-uri override it."""

    backend: Literal[TRACKERS] = "none"  # type: ignore[valid-type]
    uri: str | None = None  # MLflow tracking URI; W&B: folder for run files
    project: str | None = None  # W&B project / MLflow experiment (default: hpo)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)  # per trial
    gpu: float = Field(0.0, ge=0)  # per trial; a fraction packs several trials on one GPU


class PBTSpec(_Strict):
    """Population-based training: the population is the study's `trials`."""

    perturbation_interval: int | None = Field(None, ge=1)  # steps; None: 2 evaluation intervals
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)  # bottom part copies the top part
    resample_probability: float = Field(0.25, ge=0, le=1)
    perturbation_factors: tuple[float, float] = (0.8, 1.2)  # multiplicative: a log-scale step
    synch: bool = False  # True: members wait for each other at every perturbation
    mutations: list[str] = ["optim.lr", "optim.weight_decay", "model.dropout"]  # if in the space


class RaySpec(_Strict):
    """Settings that only `--backend ray` reads (hpo/raytune/)."""

    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]  # None: the pruner's
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(2, ge=0)  # retries of a crashed trial, from its checkpoint
    pbt: PBTSpec = PBTSpec()


class NoiseSpec(_Strict):
    """Seed noise measured while tuning (hpo.noise); off unless `seeds` is set."""

    seeds: int = Field(0, ge=0)  # extra seeds for each incumbent (2+ measure noise); 0: off
    max_share: float = Field(0.15, gt=0, lt=1)  # of the study's compute, at most
    stop_below_noise: bool = False  # end the study once gains fall below the noise

    @pydantic.model_validator(mode="after")
    def _stop_needs_seeds(self) -> NoiseSpec:
        if self.stop_below_noise and self.seeds < 2:
            raise ValueError(
                "noise.stop_below_noise needs noise.seeds of 2 or more: the noise is measured "
                "between the incumbent's re-evaluations with other seeds"
            )
        return self


class StudySpec(_Strict):
    description: str
    objective: ObjectiveSpec = ObjectiveSpec()
    trials: int = Field(50, ge=1)
    search_space: dict[str, dict[str, Any] | None] = Field(min_length=1)
    trainer: dict[str, Any] = {}  # `entry` (the training function) and fixed settings
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    baseline: dict[str, Any] | None = None  # None: no baseline, so hpo.validate refuses
    tracking: TrackingSpec = TrackingSpec()  # where each trial is also logged (W&B, MLflow)
    ray: RaySpec = RaySpec()  # --backend ray: scheduler, resources per trial, PBT
    noise: NoiseSpec = NoiseSpec()  # re-evaluations with other seeds, the stop rule (hpo.noise)
    name: str = ""  # filled from the file name
    path: str = ""

    @property
    def entry(self) -> str:
        """The training function, "module:function" (hpo.trainable)."""
        return str(self.trainer.get(ENTRY, BUILTIN_ENTRY))

    def trainable(self) -> Trainable:
        """The training function `entry` names (loaded afresh: a notebook may redefine it)."""
        return load_trainable(self.entry)

    def min_resource(self, config: dict[str, Any]) -> int | None:
        """The first rung of a pruner or scheduler, in steps: `pruner.min_evaluations`
        evaluations (one unless set) unless `pruner.min_resource` says otherwise; None when
        neither is known (a trainer without train.eval_interval)."""
        eval_interval = steps_of(config)[1]
        if self.pruner.min_resource or eval_interval is None:
            return self.pruner.min_resource
        return self.pruner.min_evaluations * eval_interval

    def fixed_config(self, sets: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults <- study.trainer <- --set: the fixed part of every trial's config."""
        return self.config_with({}, sets=sets)

    def baseline_config(self, sets: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.config_with(self.baseline or {}, sets=sets)

    def config_with(
        self, overrides: dict[str, Any], *, sets: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The trainable's defaults <- study.trainer <- `overrides` <- --set, resolved by the
        trainable (ValueError for a bad key or value)."""
        trainable = self.trainable()
        fixed = {k: v for k, v in self.trainer.items() if k != ENTRY}
        typed = {k: parse_value(v) if isinstance(v, str) else v for k, v in (sets or {}).items()}
        return trainable.resolve({**(trainable.defaults() or {}), **fixed, **overrides, **typed})

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude={"path"})


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def resolve_study_path(study: str) -> Path:
    """A shipped study's name, or a path to a YAML file."""
    path = Path(study).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UsageError(f"study file {study!r} not found")
        return path
    shipped = STUDIES_DIR / f"{study}.yaml"
    if not shipped.is_file():
        raise UsageError(
            f"unknown study {study!r}; shipped studies: {', '.join(study_names())} "
            "(or give the path of a YAML file)"
        )
    return shipped


def load_study_spec(study: str, *, sets: dict[str, Any] | None = None) -> StudySpec:
    """Find, parse and fully check a study. Raises UsageError with one line saying what is wrong."""
    path = resolve_study_path(study)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the study as UTF-8"
        ) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the study: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise UsageError(
            f"{path}: a study must be a YAML mapping of keys, but got {type(raw).__name__}"
        )
    spec = parse_spec(raw, name=path.stem, path=str(path))
    check_spec(spec, str(path), sets)
    return spec


def parse_spec(raw: dict[str, Any], *, name: str, path: str = "") -> StudySpec:
    """A study from its keys (a YAML file's, or hpo.tune's), validated by the schema: UsageError
    naming the key (and `path`, or the study's name) with one line."""
    where = path or name
    try:
        return StudySpec(**raw, name=name, path=path)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            internal = ("name", "path") if len(err["loc"]) == 1 else ()  # filled in, not written
            valid = ", ".join(f for f in _fields_at(err["loc"][:-1]) if f not in internal)
            raise UsageError(f"{where}: unknown key {key!r}; valid keys here: {valid}") from None
        if err["type"] == "missing":
            raise UsageError(f"{where}: missing required key {key!r}") from None
        message = err["msg"].removeprefix("Value error, ")
        got = repr(err.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."  # never the whole study back
        raise UsageError(f"{where}: {key}: {message}, but got {got}") from None


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = StudySpec
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def check_spec(spec: StudySpec, where: str, sets: dict[str, Any] | None = None) -> None:
    """Everything a run of `spec` will need, checked in memory: UsageError naming `where` (the
    study's file) with one line. Nothing is stored."""
    spec.trainable()  # it imports, and takes (config, run)
    for name, bounds in spec.search_space.items():
        accepted = space.bound_names(name)
        for bound in bounds or {}:
            if accepted is not None and bound not in accepted:
                raise UsageError(
                    f"{where}: unknown bound {name}.{bound}; valid for {name}: "
                    f"{', '.join(accepted) or 'none'}"
                )
    try:
        spec.fixed_config()
        spec.baseline_config()
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    try:
        base = spec.fixed_config(sets)
        spec.baseline_config(sets)
    except ValueError as e:
        raise UsageError(f"--set: {e}") from None
    try:
        owners = dry_run(spec, base).owners
    except ValueError as e:
        raise UsageError(f"{where}: search_space: {e}") from None
    if spec.trainable().defaults() is None:
        _refuse_unknown_keys(spec, owners, sets or {}, where)
    # A --set on a key the space samples would have trained a value other than the trial's
    # recorded one. (The study's own `trainer:` value of such a key stays meaningful: the
    # baseline starts from it, and it is the shape hpo.gpt scales the step budget from.)
    _refuse_fixing_tuned_keys(owners, sets or {}, "--set")
    if spec.sampler.baseline_first:
        baseline_params(spec, sets)


def _refuse_unknown_keys(
    spec: StudySpec, owners: dict[str, str], sets: dict[str, Any], where: str
) -> None:
    """A trainer that declares no defaults reads the keys its study sets: a baseline or --set
    key that neither its fixed settings nor its search space sets is a typo."""
    known = {k for k in spec.trainer if k != ENTRY} | owners.keys() | {SEED_KEY}
    for origin, keys in [(f"{where}: baseline", spec.baseline or {}), ("--set", sets)]:
        for key in keys:
            if key not in known:
                device = " (--device sets it)" if key == "train.device" else ""
                raise UsageError(
                    f"{origin}: unknown config key {key!r}{device}: neither the study's trainer "
                    f"settings nor its search space set it (known: {', '.join(sorted(known))})"
                )


def baseline_params(spec: StudySpec, sets: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters of the trial that trains the study's baseline (sampler.baseline_first)."""
    where = f"{spec.path}: sampler.baseline_first"
    if not spec.baseline:
        raise UsageError(f"{where}: the study has no baseline; add one or turn this off")
    try:
        return space.params_for(spec.search_space, spec.baseline_config(sets))
    except ValueError as e:
        raise UsageError(
            f"{where}: the baseline is not a point of the search space ({e}); "
            "widen that range or turn this off"
        ) from None


class DryRun(NamedTuple):
    owners: dict[str, str]  # config key -> the space that sets it
    distributions: dict[str, optuna.distributions.BaseDistribution]  # every parameter


def dry_run(spec: StudySpec, base: dict[str, Any] | None = None, samples: int = 32) -> DryRun:
    """Run the spaces in memory, enough times to visit their conditional branches: every bound
    is checked and every sampled config must be one the trainer accepts (ValueError
    otherwise). Says which space sets each config key, and each parameter's distribution."""
    base = base if base is not None else spec.fixed_config()
    trainable = spec.trainable()
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(previous, optuna.logging.WARNING))  # no "study created"
    try:
        dry = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        out = DryRun({}, {})
        for _ in range(samples):
            trial = dry.ask()
            overrides: dict[str, Any] = {}
            for name, bounds in spec.search_space.items():
                try:
                    sampled = space.suggest(trial, {name: bounds})
                except UsageError:
                    raise
                except ValueError:  # a bad bound: the message names it
                    raise
                except Exception as e:  # a bug in a study's own space
                    raise ValueError(f"{name}: {type(e).__name__}: {e}") from None
                out.owners.update(dict.fromkeys(sampled, name))
                overrides.update(sampled)
            trainable.resolve({**base, **overrides})
            out.distributions.update(trial.distributions)
            dry.tell(trial, 0.0)
        return out
    finally:
        optuna.logging.set_verbosity(previous)


def _refuse_fixing_tuned_keys(owners: dict[str, str], fixed: dict[str, Any], where: str) -> None:
    """A key the search space sets must not be fixed elsewhere as well: one of the two values
    would be trained while the trial records the other."""
    for key in fixed:
        if key in owners:
            raise UsageError(
                f"{where} {key} is set by the search space {owners[key]!r} in every trial; "
                f"change its bounds instead (search_space.{owners[key]} in the study YAML)"
            )
