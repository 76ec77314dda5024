"""TrainConfig: every setting of a training run, grouped and commented, overridable by dotted keys.

    cfg = TrainConfig()                                   # the defaults below
    cfg = cfg.with_overrides({"model.n_layer": 6})        # from code or YAML (typed values)
    cfg = cfg.with_overrides(parse_sets(["optim.lr=3e-4"]))  # from the command line (strings)

The defaults are a small character-level GPT that trains to a useful loss on a CPU in minutes
(nanoGPT's CPU recipe for Shakespeare).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainers.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
TOKENIZERS = ("char", "byte", "bpe")
FAMILIES = ("gpt", "hf")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class DataConfig:
    # "stdlib" (built in), a text file or folder, a saved HF dataset folder, or "hf:NAME[:CONFIG]"
    corpus: str = "stdlib"
    tokenizer: str = "char"  # char | byte | bpe (trained on the train split only)
    vocab_size: int = 2048  # bpe only: target vocabulary size
    splits: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train / val / test, contiguous
    max_chars: int = 0  # cap on corpus size (0 = all); keeps the stdlib corpus CPU-sized
    seed: int | None = None  # data order; None = derived from train.seed
    cache_dir: str = ""  # tokenized arrays; "" = $HPO_CACHE or ~/.cache/hpo


@dataclass
class ModelConfig:
    family: str = "gpt"  # gpt (ours) | hf (a transformers causal LM built from a config)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # must be divisible by n_head
    block_size: int = 64  # context length in tokens
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (False: a little faster, as good)
    # hf only: a model_type ("llama", "gpt2", ...) or a local checkpoint folder
    hf_config: str = "llama"
    pretrained: bool = False  # hf only: load the weights in hf_config's folder (fine-tuning)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3  # peak learning rate, reached after warmup
    beta1: float = 0.9  # adam family
    beta2: float = 0.99  # adam family; 0.99 suits small batches
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # decoupled for adamw; applied to matrices only, never to norms/biases
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = off


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_frac: float = 0.05  # fraction of max_steps spent warming up linearly from 0
    min_lr_frac: float = 0.1  # floor, as a fraction of optim.lr


@dataclass
class TrainLoopConfig:
    batch_size: int = 12
    max_steps: int = 2000
    eval_interval: int = 100  # steps between evaluations (and reports, and checkpoints)
    eval_batches: int = 20  # fixed validation batches per evaluation
    patience: int = 0  # stop after this many evaluations without improvement; 0 = off
    label_smoothing: float = 0.0
    seed: int = 1337  # model initialisation; also the root of data.seed and dropout_seed
    dropout_seed: int | None = None  # None = derived from seed
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto (bfloat16 autocast on CUDA, float32 elsewhere)
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch deterministic algorithms (bit-exact replays on GPU)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (tuples as lists), for JSON, YAML and manifests."""
        return {
            group: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
            for group, values in dataclasses.asdict(self).items()
        }

    def flat(self) -> dict[str, Any]:
        """{"model.n_layer": 4, ...}: the dotted form every CLI and study uses."""
        return {f"{g}.{k}": v for g, values in self.to_dict().items() for k, v in values.items()}

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted (or nested {group: {key: value}}) overrides applied and checked.

        Strings are parsed into the field's type, so command-line values work as well as typed
        ones from YAML. Raises ConfigError naming the bad key and the valid ones.
        """
        cfg = _copy(self)
        for key, value in flatten(overrides).items():
            group_name, _, name = key.partition(".")
            group = getattr(cfg, group_name, None) if group_name in _GROUPS else None
            if group is None:
                raise ConfigError(
                    f"unknown config group in {key!r}{_did_you_mean(group_name, _GROUPS)}; "
                    f"valid groups: {', '.join(_GROUPS)}"
                )
            hints = _field_types(type(group))
            if name not in hints:
                raise ConfigError(
                    f"unknown config key {key!r}{_did_you_mean(name, list(hints))}; "
                    f"valid keys in {group_name}: {', '.join(hints)}"
                )
            setattr(group, name, _coerce(key, value, hints[name]))
        cfg.validate()
        return cfg

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls().with_overrides(values)

    def validate(self) -> None:
        """Raise ConfigError on values no run could use."""
        d, m, o, s, t = self.data, self.model, self.optim, self.schedule, self.train
        _one_of("data.tokenizer", d.tokenizer, TOKENIZERS)
        _one_of("model.family", m.family, FAMILIES)
        _one_of("optim.name", o.name, OPTIMIZERS)
        _one_of("schedule.name", s.name, SCHEDULES)
        _one_of("train.device", t.device, DEVICES)
        _one_of("train.dtype", t.dtype, DTYPES)
        if len(d.splits) != 3 or any(x < 0 for x in d.splits) or abs(sum(d.splits) - 1) > 1e-6:
            raise ConfigError(
                f"data.splits must be three non-negative fractions summing to 1, but got {d.splits}"
            )
        if min(d.splits[0], d.splits[1]) <= 0:
            raise ConfigError(f"data.splits needs a train and a val part, but got {d.splits}")
        for key, value in [
            ("model.n_layer", m.n_layer),
            ("model.n_head", m.n_head),
            ("model.n_embd", m.n_embd),
            ("model.block_size", m.block_size),
            ("train.batch_size", t.batch_size),
            ("train.max_steps", t.max_steps),
            ("train.eval_interval", t.eval_interval),
            ("train.eval_batches", t.eval_batches),
            ("data.vocab_size", d.vocab_size),
        ]:
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, but got {key.split('.')[1]}={value}")
        if m.n_embd % m.n_head:
            raise ConfigError(
                f"model.n_embd must be divisible by model.n_head, "
                f"but got n_embd={m.n_embd}, n_head={m.n_head}"
            )
        for key, value, low, high in [
            ("model.dropout", m.dropout, 0.0, 1.0),
            ("train.label_smoothing", t.label_smoothing, 0.0, 1.0),
            ("schedule.warmup_frac", s.warmup_frac, 0.0, 1.0),
            ("schedule.min_lr_frac", s.min_lr_frac, 0.0, 1.0),
            ("optim.beta1", o.beta1, 0.0, 1.0),
            ("optim.beta2", o.beta2, 0.0, 1.0),
            ("optim.momentum", o.momentum, 0.0, 1.0),
        ]:
            if not low <= value < high and not (key.startswith("schedule") and value == high):
                raise ConfigError(f"{key} must be in [{low}, {high}), but got {value}")
        for key, value in [
            ("optim.lr", o.lr),
            ("optim.eps", o.eps),
        ]:
            if not value > 0:
                raise ConfigError(f"{key} must be positive, but got {value}")
        for key, value in [
            ("optim.weight_decay", o.weight_decay),
            ("optim.grad_clip", o.grad_clip),
            ("train.patience", t.patience),
            ("data.max_chars", d.max_chars),
        ]:
            if value < 0:
                raise ConfigError(f"{key} must not be negative, but got {value}")


_GROUPS = [f.name for f in dataclasses.fields(TrainConfig)]


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """["model.n_layer=6", ...] (the --set flag) -> {"model.n_layer": "6"}."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. model.n_layer=6), but got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _copy(cfg: TrainConfig) -> TrainConfig:
    return TrainConfig(
        **{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    )


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys from a config that may be nested by group ({"optim": {"lr": 1e-3}})."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if "." not in key and isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


@functools.cache  # get_type_hints evaluates every annotation's string: once per class is enough
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(
            f"{key} must be one of {', '.join(options)}, but got {value!r}"
            f"{_did_you_mean(value, list(options))}"
        )


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn `value` into the field's declared type, or raise ConfigError saying what was wanted."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, hint)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or len(items) != len(args):
            raise ConfigError(
                f"{key} expects {len(args)} comma-separated values, but got {value!r}"
            )
        return tuple(_coerce(key, v, a) for v, a in zip(items, args, strict=True))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                as_float = float(value)  # accepts "1e3"
                if as_float.is_integer():
                    return int(as_float)
                raise ValueError
            if isinstance(value, int):
                return value
            raise ValueError
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, but got {value!r}")
            return number
        if hint is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        pass
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key} expects a value of type {name}, but got {value!r}")
