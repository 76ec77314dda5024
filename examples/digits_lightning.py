"""The digits CNN of examples/digits.py as a LightningModule: how a Lightning user puts their
module under hpo with one call (hpo.integrations.lightning.fit).

    pip install -e ".[lightning]"
    python -m hpo.run --study digits_lightning
    python -m hpo.validate --study digits_lightning --seeds 10
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from examples.digits import build, optimizer, splits
from hpo.integrations import lightning as hpl


class Digits(pl.LightningDataModule):
    """The fixed train / val / test split of scikit-learn's digits."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size, self.data = batch_size, splits()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.data["train"]), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.data["val"]), batch_size=len(self.data["val"][1]))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.data["test"]), batch_size=len(self.data["test"][1]))


class LitDigits(pl.LightningModule):
    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config
        # the weights come from Lightning's seed (seed_everything), set before this is built
        self.net = build(config, seed=torch.initial_seed())

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def _scores(self, batch: Any, split: str) -> None:
        x, y = batch
        logits = self.net(x)
        self.log(f"{split}_loss", F.cross_entropy(logits, y))
        self.log(f"{split}_accuracy", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch: Any, _: int) -> None:
        self._scores(batch, "val")

    def test_step(self, batch: Any, _: int) -> None:
        self._scores(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return optimizer(self, self.config)  # examples/digits.py's: AdamW, Adam or SGD


def train(config: dict, run: Any) -> None:
    hpl.fit(
        run,
        lambda: LitDigits(config),
        datamodule=Digits(config["train.batch_size"]),
        accelerator=config["train.device"],
    )
