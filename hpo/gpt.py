"""The built-in GPT trainer (trainers/) as a trainable: the first user of the seam, not a
special case. A study that names no `trainer.entry` trains it (`hpo.gpt:train`).

trainers/ knows nothing of hpo. This adapter hands it the run's report callback and checkpoint
folder, turns its errors into the seam's, and answers the hooks only a GPT can answer: its
config schema and defaults, its corpus and device checks, equal-token budgets when the batch
size or context is tuned, its divergence limit in the objective's units, and which settings a
shared seed pairs.

Equal compute: the pruners' resource is training steps, and a step of a larger batch or a
longer context sees more tokens; at the same step such a trial has had more compute, rungs
compare unequal budgets, and the search drifts to the largest batch. So a trial whose tokens per
step differ from the study's fixed config gets its step budget and evaluation interval rescaled
to train on as many tokens, and reports each evaluation at the step at which the fixed config
would have seen as many tokens. A trial of the fixed shape is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hpo.seam import (
    ContractError,
    DiskFull,
    Diverged,
    InvalidConfig,
    OutOfMemory,
    Run,
    StopTrial,
)
from hpo.trainable import Trainable
from trainers import (
    DiskFullError,
    DivergedError,
    OutOfMemoryError,
    StopTraining,
    TrainConfig,
    UsageError,
    preflight,
    resolve_seeds,
    score_checkpoint,
)
from trainers import train as train_gpt
from trainers.data import Data, load_data
from trainers.device import resolve_device
from trainers.model import build_model, count_params
from trainers.state import CHANGEABLE_ON_RESUME

# a seed gives two configs the same initial weights and batches only when these match
PAIRING_KEYS = (
    *("model.family", "model.n_layer", "model.n_head", "model.n_embd", "model.block_size"),
    *("model.bias", "model.hf_config", "train.batch_size"),
)


class GPT(Trainable):
    """trainers.train behind the seam, with the GPT's hooks."""

    def __call__(self, config: dict[str, Any], run: Run) -> None:
        cfg = _config(config)
        try:
            data = data_for(cfg)
        except UsageError as e:  # a corpus this sampled context is too long for
            raise InvalidConfig(str(e)) from None
        run.note(
            n_params=n_params(cfg, data),
            data=data.info(),
            seeds=resolve_seeds(cfg),
            device=str(resolve_device(cfg.train.device)),
        )

        def report(step: int, metrics: dict[str, float]) -> None:
            run.save(step)  # the trainer saved last.pt (and best.pt) of this step just before
            try:
                run.report(step, metrics)
            except StopTrial as e:  # the trainer stops cleanly, its checkpoint saved
                raise StopTraining(e.reason) from None

        try:
            result = train_gpt(
                cfg,
                report=report,
                checkpoint_dir=run.checkpoint_dir,
                # a retry resumes from its checkpoint; a PBT member from its donor's, with its
                # own settings
                allow_changes=True,
                data=data,
            )
        except DivergedError as e:
            value = diverged_value(e, metric=run.metric, minimize=run.minimize, data=data)
            raise Diverged(e.step, str(e), value=value) from None
        except OutOfMemoryError as e:
            raise OutOfMemory(str(e)) from None
        except DiskFullError as e:
            raise DiskFull(str(e)) from e
        except ContractError:  # from run.report: the study's objective is not what it reports
            raise
        except UsageError as e:  # a sampled config this trainer cannot run
            raise InvalidConfig(str(e)) from None
        run.restored(result.resumed_from, result.history)  # from the trainer's own last.pt
        run.note(stop_reason=result.stop_reason, tokens_per_s=result.tokens_per_s)
        if run.scores_test and result.checkpoint is not None:
            run.report_test(score_checkpoint(cfg, result.checkpoint, split="test", data=data))

    def defaults(self) -> dict[str, Any]:
        return TrainConfig().flat()

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        return _config(config).flat()

    def preflight(
        self, config: dict[str, Any], *, splits: tuple[str, ...], device: bool = True
    ) -> None:
        # the corpus, the context and the device, as every trial will use them; the tokenized
        # data stays cached for the trials that follow
        preflight(_config(config), needed=splits, device=device)

    def budget(self, config: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        return equal_compute(_config(config), _config(fixed)).flat()

    def resource(self, step: int, config: dict[str, Any], fixed: dict[str, Any]) -> int:
        ratio = self.tokens_per_step(config) / self.tokens_per_step(fixed)
        return step if ratio == 1 else round(step * ratio)

    def tokens_per_step(self, config: dict[str, Any]) -> int:
        return int(config["train.batch_size"]) * int(config["model.block_size"])

    def seeded(self, config: dict[str, Any], seed: int) -> dict[str, Any]:
        # seed i: the same initialisation, data order and dropout stream for every config
        return {**config, "train.seed": seed, "data.seed": None, "train.dropout_seed": None}

    def pairing_keys(self) -> tuple[str, ...]:
        return PAIRING_KEYS

    def changeable_on_resume(self) -> frozenset[str]:
        return CHANGEABLE_ON_RESUME


train = GPT()  # the entry "hpo.gpt:train"


def _config(config: dict[str, Any]) -> TrainConfig:
    return TrainConfig().with_overrides(config)


def tokens_per_step(cfg: TrainConfig) -> int:
    return cfg.train.batch_size * cfg.model.block_size


def equal_compute(cfg: TrainConfig, base: TrainConfig) -> TrainConfig:
    """`cfg` with max_steps and eval_interval giving it `base`'s tokens, evaluated at (just
    past) `base`'s token counts: rounded up, so every evaluation reaches its rung."""
    ratio = tokens_per_step(base) / tokens_per_step(cfg)
    if ratio == 1:
        return cfg
    return cfg.with_overrides(
        {
            "train.max_steps": math.ceil(base.train.max_steps * ratio),
            "train.eval_interval": math.ceil(base.train.eval_interval * ratio),
        }
    )


def diverged_value(e: DivergedError, *, metric: str, minimize: bool, data: Data) -> float:
    """What a diverged trial reports: the divergence limit in the metric's units, worse than any
    run that did not blow up (for TPE, a pruned trial ranks by its step, then by this value)."""
    nats = e.limit if e.limit is not None else e.loss
    if metric == "val/bpb":
        nats /= math.log(2) * data.bytes_per_token["val"]
    return nats if minimize else -nats


_DATA: dict[str, Data] = {}


def data_for(cfg: TrainConfig) -> Data:
    """The tokenized splits `cfg` trains on, loaded once per process (by every trial of a
    worker, Optuna's or Ray's)."""
    key = repr((cfg.data, cfg.model.block_size))
    if key not in _DATA:
        _DATA[key] = load_data(cfg.data, block_size=cfg.model.block_size)
    return _DATA[key]


_N_PARAMS: dict[tuple[str, int], int] = {}


def n_params(cfg: TrainConfig, data: Data) -> int:
    """Parameter count without allocating the weights (a meta-device model), known before
    training ends (Ray may stop a trial mid-way); counted once per model shape and process."""
    key = (repr(cfg.model), data.vocab_size)
    if key not in _N_PARAMS:
        try:
            with torch.device("meta"):
                _N_PARAMS[key] = count_params(build_model(cfg.model, data.vocab_size))
        except Exception:  # a model family that cannot be built on the meta device
            _N_PARAMS[key] = 0
    return _N_PARAMS[key]
