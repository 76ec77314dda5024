"""A PyTorch Lightning `LightningModule` under hpo, in one call:

    from hpo.integrations import lightning as hpl

    def train(config: dict, run: hpo.Run) -> None:
        hpl.fit(run, lambda: LitClassifier(config), datamodule=Digits(config))

`fit` seeds everything with the run's seed (`seed_everything`) before it builds the module,
trains for `train.max_steps` with a validation every `train.eval_interval` steps, reports each
validation's `trainer.callback_metrics` (`val_acc` -> `val/acc`, `val/acc` stays), stops a
pruned trial through `trainer.should_stop` (no exception unwinds the ranks), keeps Lightning's
own checkpoints (`last.ckpt` and the best) in the trial's folder and resumes a crashed trial
from `last.ckpt` (`ckpt_path`), and scores the test split on the best checkpoint for
hpo.validate (`trainer.test(ckpt_path="best")`).

Only global rank 0 talks to hpo's storage; the stop decision is broadcast to the other ranks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from hpo.integrations import metric_name, metric_names, steps
from hpo.seam import ContractError, Run, StopTrial
from hpo.trainable import EVAL_INTERVAL_KEY, MAX_STEPS_KEY

LAST = "last.ckpt"  # Lightning's own name for the latest checkpoint (save_last=True)


class TrialCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose state a retry reloads (the best so far, the last
    path): kept under a key that does not name the monitor (which is known only at the first
    validation), with its paths moved to the trial's folder (a retry takes the crashed trial's
    folder over under its own name)."""

    @property
    def state_key(self) -> str:
        return "hpo.checkpoint"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = str(state_dict.get("dirpath") or self.dirpath)

        def moved(path: Any) -> Any:
            return path.replace(old, str(self.dirpath), 1) if isinstance(path, str) else path

        state = {**state_dict, "dirpath": self.dirpath}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = moved(state.get(key))
        state["best_k_models"] = {moved(k): v for k, v in state.get("best_k_models", {}).items()}
        self.monitor = self.monitor or state_dict.get("monitor")
        super().load_state_dict(state)


class ReportCallback(Callback):
    """Each validation's metrics to the run at the global step; a pruned trial sets
    `trainer.should_stop` on every rank. Its reports are saved in Lightning's checkpoints (the
    callback's state), so a resumed trial knows its history."""

    def __init__(self, run: Run, checkpoint: ModelCheckpoint) -> None:
        self.run, self.checkpoint = run, checkpoint
        self.history: list[dict[str, float]] = []
        self.saved_step: int | None = None  # a checkpoint of this step to tell the run of
        self.resumed_from = 0  # the step of the checkpoint a retry continues from

    @property
    def state_key(self) -> str:
        return "hpo.report"

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.resumed_from = int(self.history[-1]["step"]) if self.history else 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """What Lightning trains with: its budget and its optimizers' settings (the record's
        proof that the sampled values reached them)."""
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        # a schedule's warmup has already scaled "lr": "initial_lr" is what it was given
        groups = [{**g, "lr": g.get("initial_lr", g["lr"])} for g in groups]
        keep = ("lr", "weight_decay", "betas", "momentum")
        self.run.note(
            framework={
                "max_steps": trainer.max_steps,
                "val_check_interval": trainer.val_check_interval,
                "seed": self.run.seeds.get("init"),
                "optimizers": [
                    {k: list(g[k]) if k == "betas" else g[k] for k in keep if k in g}
                    for g in groups
                ],
            }
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step, stop = trainer.global_step, False
        metrics = metric_names(trainer.callback_metrics, default_split="val")
        self._monitor(trainer)
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self.run.report(step, metrics)
            except StopTrial:
                stop = True
            except BaseException as e:  # diverged, a broken contract: the others must stop too
                stop, error = True, e
            self.history.append({"step": step, **metrics})
        # every rank stops at the same step: a rank that went on would wait for the others
        trainer.should_stop = trainer.should_stop or trainer.strategy.broadcast(stop, src=0)
        if error is not None:
            raise error

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict) -> None:
        self.saved_step = trainer.global_step  # written once this hook returns

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._tell_saved(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tell_saved(trainer)

    def _tell_saved(self, trainer: pl.Trainer) -> None:
        if self.saved_step is not None and trainer.is_global_zero:
            self.run.save(self.saved_step)  # Lightning's checkpoint: what Ray or PBT hands on
        self.saved_step = None

    def _monitor(self, trainer: pl.Trainer) -> None:
        """The best checkpoint follows the study's objective, under the name the module logs
        it by (known at the first validation)."""
        if self.checkpoint.monitor is not None:
            return
        for key in trainer.callback_metrics:
            if metric_name(str(key), "val") == self.run.metric:
                self.checkpoint.monitor = str(key)
                return
        logged = ", ".join(map(repr, trainer.callback_metrics)) or "nothing"
        raise ContractError(
            f"the LightningModule logs no {self.run.metric!r}, the study objective's metric "
            f"(it logged {logged}); self.log({self.run.metric!r}, ...) in validation_step"
        )


def fit(
    run: Run,
    model_init: Callable[[], pl.LightningModule],
    *,
    datamodule: pl.LightningDataModule | None = None,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    test_dataloaders: Any = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """Train the module `model_init` builds (after seeding) as this trial; `trainer_kwargs` go
    to `lightning.pytorch.Trainer` (accelerator, precision, gradient_clip_val, ...), except
    the settings hpo owns: the step budget, the validation interval and the checkpoints."""
    config = run.config
    max_steps, interval = (
        steps(config, key, "hpl.fit") for key in (MAX_STEPS_KEY, EVAL_INTERVAL_KEY)
    )
    owned = {"max_steps", "val_check_interval", "check_val_every_n_epoch", "default_root_dir"}
    if owned & trainer_kwargs.keys():
        raise ContractError(
            f"hpl.fit: {', '.join(sorted(owned & trainer_kwargs.keys()))} is set by hpo from "
            "train.max_steps and train.eval_interval; set those in the study instead"
        )
    if run.scores_test and datamodule is None and test_dataloaders is None:  # before training
        raise ContractError("hpl.fit: hpo.validate scores the test split: pass test_dataloaders=")
    # hpo shows the study's progress: not Lightning's notices (GPU available, tips) per trial
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    pl.seed_everything(run.seed("init"), workers=True, verbose=False)
    model = model_init()
    checkpoint = TrialCheckpoint(
        dirpath=run.checkpoint_dir,
        filename="best-{step}",
        mode="min" if run.minimize else "max",
        save_last=True,  # last.ckpt: what a retry resumes from
        save_top_k=1,
        save_on_train_epoch_end=False,  # at each validation, the step the report was made
        enable_version_counter=False,  # a retry writes last.ckpt again, not last-v1.ckpt
    )
    reporter = ReportCallback(run, checkpoint)
    trainer = pl.Trainer(
        max_steps=max_steps,
        val_check_interval=interval,
        check_val_every_n_epoch=None,  # validations count in steps, across epochs
        num_sanity_val_steps=0,
        default_root_dir=run.checkpoint_dir,
        logger=trainer_kwargs.pop("logger", False),
        enable_progress_bar=trainer_kwargs.pop("enable_progress_bar", False),
        enable_model_summary=trainer_kwargs.pop("enable_model_summary", False),
        callbacks=[reporter, checkpoint, *trainer_kwargs.pop("callbacks", [])],
        **trainer_kwargs,
    )
    last = run.checkpoint_dir / LAST
    resumed = last.is_file()
    data = {"datamodule": datamodule} if datamodule is not None else {}
    trainer.fit(
        model,
        train_dataloaders=train_dataloaders,
        val_dataloaders=val_dataloaders,
        ckpt_path=str(last) if resumed else None,
        **data,
    )
    if resumed:  # the reports before it came back with the checkpoint (the callback's state)
        run.restored(reporter.resumed_from, reporter.history)
    if run.scores_test:
        data = {"datamodule": datamodule} if test_dataloaders is None else {}
        (scores,) = trainer.test(
            model, dataloaders=test_dataloaders, ckpt_path="best", verbose=False, **data
        )
        run.report_test(metric_names(scores, default_split="test"))
    return trainer
