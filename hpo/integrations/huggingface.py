"""A Hugging Face `transformers.Trainer` under hpo, in two calls:

    from hpo.integrations import huggingface as hf

    def train(config: dict, run: hpo.Run) -> None:
        trainer = Trainer(
            model_init=lambda: build(config),        # the model is built after the seed is set
            args=hf.training_arguments(run),         # the config's optim/schedule/train keys
            train_dataset=data["train"], eval_dataset=data["val"],
            compute_metrics=f1_and_accuracy,
        )
        hf.fit(trainer, run, test_dataset=data["test"])

`training_arguments` turns hpo's config keys into `TrainingArguments` (optim.lr ->
learning_rate, train.batch_size -> per_device_train_batch_size, schedule.warmup_frac ->
warmup_steps, ...), evaluates and checkpoints every `train.eval_interval` steps into the trial's
own folder, and hands the run's seeds to `seed` (model init: build the model, and a PEFT
adapter, inside `model_init`, which the Trainer calls after seeding) and `data_seed` (the batch
order). `fit` adds the callback that reports each evaluation (`eval_f1` -> `val/f1`) and stops
the Trainer cleanly when the trial is pruned, resumes a crashed trial from the Trainer's own
last checkpoint, records what the Trainer received, and scores the test split for hpo.validate
(on the best evaluation's weights: `load_best_model_at_end`).
"""

from __future__ import annotations

import shutil
from enum import Enum
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from hpo.integrations import framework_name, metric_names, steps
from hpo.seam import ContractError, InvalidConfig, Run, StopTrial
from hpo.trainable import EVAL_INTERVAL_KEY, MAX_STEPS_KEY

# hpo's config key -> the TrainingArguments field it sets, where the config has the key
ARGUMENTS = {
    "optim.lr": "learning_rate",
    "optim.weight_decay": "weight_decay",
    "optim.beta1": "adam_beta1",
    "optim.beta2": "adam_beta2",
    "optim.eps": "adam_epsilon",
    "optim.grad_clip": "max_grad_norm",
    "train.batch_size": "per_device_train_batch_size",
}
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "adafactor": "adafactor"}
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
# what the record keeps of the arguments the Trainer received (the record never lies)
RECEIVED = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "per_device_train_batch_size",
    "optim",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "eval_steps",
    "seed",
    "data_seed",
)


def training_arguments(run: Run, **overrides: Any) -> TrainingArguments:
    """TrainingArguments for this run: hpo's config keys (see ARGUMENTS), the step budget
    (`train.max_steps`) with an evaluation and a checkpoint every `train.eval_interval` steps in
    run.checkpoint_dir, the run's seeds, the best evaluation's weights kept for the test split.
    `overrides` are TrainingArguments fields of your own (they win)."""
    config = run.config
    max_steps, interval = (
        steps(config, key, "hf.training_arguments") for key in (MAX_STEPS_KEY, EVAL_INTERVAL_KEY)
    )
    kwargs: dict[str, Any] = {
        field: config.get(key) for key, field in ARGUMENTS.items() if config.get(key) is not None
    }
    if config.get("optim.name") is not None:
        kwargs["optim"] = _choice(config, "optim.name", OPTIMIZERS)
    if config.get("schedule.name") is not None:
        kwargs["lr_scheduler_type"] = _choice(config, "schedule.name", SCHEDULES)
    if config.get("schedule.warmup_frac") is not None:
        kwargs["warmup_steps"] = round(float(config["schedule.warmup_frac"]) * max_steps)
    kwargs = {
        "output_dir": str(run.checkpoint_dir),
        "max_steps": max_steps,
        "eval_strategy": "steps",
        "eval_steps": interval,
        "save_strategy": "steps",
        "save_steps": interval,  # a checkpoint at every report: what a retry resumes from
        "logging_steps": interval,
        "save_total_limit": 2,  # the last and the best (1 would delete the last at the end)
        "load_best_model_at_end": True,  # the weights hpo.validate scores on the test split
        "metric_for_best_model": framework_name(run.metric),
        "greater_is_better": not run.minimize,
        "seed": run.seed("init"),  # set before model_init: the model's and an adapter's init
        "data_seed": run.seed("data"),  # the batch order
        "report_to": "none",  # hpo's tracker logs the reports (--tracking)
        "disable_tqdm": True,  # hpo shows the study's progress
        **kwargs,
        **overrides,
    }
    try:
        return TrainingArguments(**kwargs)
    except ValueError as e:  # a sampled combination the Trainer refuses (its own checks)
        raise InvalidConfig(f"the Trainer refused the config: {e}") from None


class ReportCallback(TrainerCallback):
    """Each evaluation to the run at the Trainer's global step; a pruned trial stops the
    Trainer at that step (should_training_stop) instead of raising through it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.training = True  # fit's own evaluation of the test split is not a report

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.run.note(framework=received(args, model))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training:
            return control
        values = metric_names(metrics or {}, default_split="val")
        try:  # raises Diverged for a non-finite objective: the trial ends there
            self.run.report(state.global_step, values)
        except StopTrial:
            control.should_training_stop = True  # the checkpoint of this step is still written
        return control

    def on_save(self, args, state, control, **kwargs):
        self.run.save(state.global_step)  # the Trainer wrote checkpoint-<step> in its folder
        return control


def fit(trainer: Trainer, run: Run, *, test_dataset: Any = None) -> None:
    """Train `trainer` as this trial: reports, pruning, resume from its last checkpoint in
    run.checkpoint_dir, and the test split scored when hpo.validate asks (`test_dataset`)."""
    output = Path(trainer.args.output_dir).resolve()
    if output != run.checkpoint_dir.resolve():
        raise ContractError(
            f"hf.fit: the Trainer writes its checkpoints to {output}, not to the trial's "
            f"folder {run.checkpoint_dir}: build its arguments with "
            "hf.training_arguments(run) (or output_dir=run.checkpoint_dir)"
        )
    if run.scores_test and test_dataset is None:
        raise ContractError("hf.fit: hpo.validate scores the test split: pass test_dataset=")
    callback = ReportCallback(run)
    trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)  # its print of every log: hpo shows the progress
    last = last_complete_checkpoint(output, before=trainer.args.max_steps)
    trainer.train(resume_from_checkpoint=last)
    # the reports of the run a retry continues are in the checkpoint's trainer state
    run.restored(_step_of(Path(last)) if last else 0, history(trainer.state.log_history))
    if run.scores_test:
        callback.training = False
        metrics = trainer.evaluate(test_dataset, metric_key_prefix="test")
        run.report_test(metric_names(metrics, default_split="test"))


def last_complete_checkpoint(folder: Path, *, before: int = 0) -> str | None:
    """The newest checkpoint-<step> the Trainer finished writing (its trainer_state.json is
    written last); one a kill cut short is removed, so that the Trainer neither fails on it
    nor silently starts over from step 0 with its weights.

    With `before` (the Trainer's max_steps), a step below it only: a Trainer resumed at its
    max_steps trains, evaluates and saves one step more. So a trial killed after its last
    checkpoint trains again from the newest one before it (with save_total_limit 2, the best
    one, however early), and the checkpoints at `before` and beyond are removed: the retry
    writes them again, and a stale one would count as the newest when the Trainer rotates."""
    found = folder.glob("checkpoint-*") if folder.is_dir() else []
    for path in sorted((p for p in found if _step_of(p) is not None), key=_step_of, reverse=True):
        complete = (path / "trainer_state.json").is_file()
        if complete and (before <= 0 or _step_of(path) < before):
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def _step_of(checkpoint: Path) -> int | None:
    """The step of a Trainer's checkpoint-<step> folder (None for another name)."""
    step = checkpoint.name.rpartition("-")[2]
    return int(step) if step.isdigit() else None


def history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The evaluations in a Trainer's log history, as run reports ({"step": s, **metrics})."""
    rows = []
    for entry in log_history:
        metrics = metric_names({k: v for k, v in entry.items() if k.startswith("eval_")}, "val")
        if metrics:
            rows.append({"step": int(entry["step"]), **metrics})
    return rows


def received(args: TrainingArguments, model: Any = None) -> dict[str, Any]:
    """What the Trainer was given: the arguments hpo sets, and a PEFT adapter's settings."""
    out: dict[str, Any] = {}
    for name in RECEIVED:
        value = getattr(args, name, None)
        value = value.value if isinstance(value, Enum) else value  # OptimizerNames.ADAMW_TORCH
        out[name] = value if value is None or isinstance(value, int | float | str) else str(value)
    peft = getattr(model, "peft_config", None)
    if peft:
        adapter = next(iter(peft.values()))
        targets = adapter.target_modules
        out["peft"] = {
            "type": str(getattr(adapter, "peft_type", "")),
            **{
                k: getattr(adapter, k)
                for k in ("r", "lora_alpha", "lora_dropout")
                if hasattr(adapter, k)
            },
            # a list of names, or one string (a regex, "all-linear") kept as it is
            "target_modules": targets
            if isinstance(targets, str) or targets is None
            else sorted(targets),
        }
    return out


def _choice(config: dict[str, Any], key: str, choices: dict[str, str]) -> str:
    value = config[key]
    if value not in choices:
        raise InvalidConfig(
            f"{key} = {value!r} has no Trainer equivalent here; choose one of {', '.join(choices)}"
        )
    return choices[value]
