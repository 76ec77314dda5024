"""What hpo trains: a trainable, named by "module:function", and what hpo may ask of it.

A trainable is any training function `train(config, run) -> None` (the seam: hpo.seam.Run).
That is all hpo needs. A trainable that knows more about itself says so by subclassing
`Trainable` and overriding the hooks below; each has a default that suits plain user code. The
built-in GPT (hpo.gpt) is such a subclass: its equal-token budgets, its config schema, its
corpus checks and its pairing of seeds are hooks, so that nothing else in hpo knows it is
training a GPT.

Configs are flat dicts of dotted keys ({"optim.lr": 1e-3, "train.max_steps": 600}): the study's
fixed settings (`trainer:`), overridden by `--set`, overridden by the sampled values. Two keys
have a meaning for hpo when a trainable has them: `train.max_steps` and `train.eval_interval`
(the step budget and the steps between reports, which the pruners and Ray's schedulers count
in), and `train.seed` (the root of every seed `run.seed` hands out; hpo.validate and seed
re-evaluations change it).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.seam import Run

TrainFn = Callable[[dict[str, Any], "Run"], None]

SEED_KEY = "train.seed"  # the root of a run's seeds
MAX_STEPS_KEY = "train.max_steps"  # the step budget the pruners count in
EVAL_INTERVAL_KEY = "train.eval_interval"  # steps between reports
BUILTIN_ENTRY = "hpo.gpt:train"  # the built-in GPT: a study without trainer.entry trains it


class Trainable:
    """A training function and what hpo may ask of it. Subclass it to give hpo more than the
    function (override `__call__` and whichever hooks apply); a plain function needs none."""

    def __call__(self, config: dict[str, Any], run: Run) -> None:
        """Train with `config`, reporting through `run` (hpo.seam.Run)."""
        raise NotImplementedError

    def defaults(self) -> dict[str, Any] | None:
        """Every config key the trainable reads, with its default. None (the default): the
        keys are whatever the study sets (its fixed settings and its search space)."""
        return None

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` checked and completed, as the function will get it; raises ValueError
        (or hpo.seam.InvalidConfig) naming a bad key or value."""
        return dict(config)

    def preflight(
        self, config: dict[str, Any], *, splits: tuple[str, ...], device: bool = True
    ) -> None:
        """Check the machine and the data before a study is created (a missing corpus, a
        device this machine lacks), raising UsageError with one line. `splits`: the data splits
        the runs will read (hpo.validate adds "test"); device=False: not this machine's (a Ray
        driver)."""

    def budget(self, config: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        """The config a trial runs with, its budget made equal to `fixed`'s (the study's fixed
        settings): hpo.gpt gives a trial of a larger batch fewer steps, for as many tokens."""
        return config

    def resource(self, step: int, config: dict[str, Any], fixed: dict[str, Any]) -> int:
        """The step a report at `step` counts as for the pruners, in `fixed`'s units."""
        return step

    def tokens_per_step(self, config: dict[str, Any]) -> int | None:
        """How much data a step sees, when compute is better counted in tokens than steps."""
        return None

    def seeded(self, config: dict[str, Any], seed: int) -> dict[str, Any]:
        """`config` with every seed derived from `seed` (hpo.validate's seed i)."""
        return {**config, SEED_KEY: seed}

    def pairing_keys(self) -> tuple[str, ...]:
        """Keys that must match for one seed to give two configs the same initial weights and
        data order (hpo.validate says when a comparison is less paired). Unknown: ()."""
        return ()

    def changeable_on_resume(self) -> frozenset[str] | None:
        """Keys a run may change and still continue from a checkpoint (PBT's mutations).
        None: any (the function builds from its config, then restores the state)."""
        return None


class FunctionTrainable(Trainable):
    """A plain training function, with every hook at its default."""

    def __init__(self, fn: TrainFn) -> None:
        self.fn = fn

    def __call__(self, config: dict[str, Any], run: Run) -> None:
        self.fn(config, run)

    def __repr__(self) -> str:
        return f"FunctionTrainable({entry_name(self.fn)})"


# Functions given to hpo.tune that another process cannot import (defined in a notebook, a
# script run as __main__, or inside a function): found here, in this process only.
_LOCAL: dict[str, Any] = {}


def entry_name(obj: Any) -> str:
    """The "module:qualname" of a function or class; of an object (a Trainable instance), the
    module-level name it is bound to ("hpo.gpt:train"), else its class's name and its id."""
    if hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
        return f"{obj.__module__}:{obj.__qualname__}"
    module = type(obj).__module__
    bound = [k for k, v in vars(sys.modules.get(module, sys)).items() if v is obj]
    return f"{module}:{bound[0]}" if bound else f"{module}:{type(obj).__qualname__}#{id(obj):x}"


def register(obj: Any) -> str:
    """The entry that names `obj`; an object no other process could import by that name is
    remembered in this process (and `importable` says so)."""
    name = entry_name(obj)
    try:
        found = _import(name)
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not obj:
        _LOCAL[name] = obj
    return name


def importable(entry: str) -> bool:
    """Whether other processes (workers, hpo.worker, Ray) can load `entry` by its name (a
    search space's name too: a shipped one's is)."""
    return entry not in _LOCAL and not entry.startswith("__main__:")


def load_entry(entry: str, *, what: str) -> Any:
    """The object `entry` ("module:attribute") names, or UsageError saying why it cannot be
    loaded. `what` names the setting in the message ("trainer.entry")."""
    if entry in _LOCAL:
        return _LOCAL[entry]
    module, sep, attr = entry.partition(":")
    if not sep or not module.strip() or not attr.strip():
        raise UsageError(
            f"{what}: expected 'module:function' (e.g. 'mypkg.train:train'), but got {entry!r}"
        )
    try:
        return _import(entry)
    except ImportError as e:
        hint = "" if os.getcwd() in sys.path else " (is its folder on PYTHONPATH?)"
        raise UsageError(
            f"{what} {entry!r}: module {module!r} does not import: {type(e).__name__}: {e}{hint}"
        ) from None
    except AttributeError:
        raise UsageError(f"{what} {entry!r}: module {module!r} has no {attr!r}") from None
    except Exception as e:  # the module's own code failed as it was imported
        raise UsageError(
            f"{what} {entry!r}: importing module {module!r} failed: {type(e).__name__}: {e}"
        ) from None


def _import(entry: str) -> Any:
    module, _, attr = entry.partition(":")
    if entry.startswith("__main__:") and "__main__" not in sys.modules:
        raise ImportError("no __main__ module")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        if part == "<locals>":
            raise AttributeError(part)
        obj = getattr(obj, part)
    return obj


def load_trainable(entry: str) -> Trainable:
    """The trainable `entry` names (a function, a Trainable, or a Trainable subclass), its
    signature checked: UsageError with one line when it cannot train."""
    obj = load_entry(entry, what="trainer.entry")
    if isinstance(obj, type) and issubclass(obj, Trainable):
        obj = obj()
    if not callable(obj):
        raise UsageError(
            f"trainer.entry {entry!r} is a {type(obj).__name__}, not a function; "
            "name a function train(config, run)"
        )
    check_signature(obj, entry)
    return obj if isinstance(obj, Trainable) else FunctionTrainable(obj)


def check_signature(fn: Callable[..., Any], entry: str) -> None:
    """A training function is called as fn(config, run)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let the call tell
        return
    try:
        signature.bind({}, None)
    except TypeError:
        raise UsageError(
            f"trainer.entry {entry!r} must take (config, run), but its signature is "
            f"{signature}; write it as def train(config: dict, run: hpo.Run) -> None"
        ) from None


def nest(config: Mapping[str, Any]) -> dict[str, Any]:
    """Grouped by the part before the first dot, for trackers' config panels; a dotted key
    whose group is also a key of its own stays as it is."""
    plain = {key for key in config if "." not in key}
    out: dict[str, Any] = {}
    for key, value in config.items():
        group, dot, name = key.partition(".")
        if dot and group not in plain:
            out.setdefault(group, {})[name] = value
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """A --set value as the type it reads as: 3 and 1e-3 are numbers, true/false booleans,
    null None, [1, 2] a list; anything else stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def steps_of(config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(the step budget, the steps between reports), where the config says them."""

    def whole(key: str) -> int | None:
        value = config.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return int(value) if number else None

    return whole(MAX_STEPS_KEY), whole(EVAL_INTERVAL_KEY)
