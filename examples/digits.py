"""Your own model under hpo: a small CNN on scikit-learn's handwritten digits (8x8 images, 10
classes, shipped inside scikit-learn: nothing is downloaded), with its own training loop.

    python -m hpo.run --study digits          # studies/digits.yaml names train and suggest
    python -m hpo.validate --study digits --seeds 10

`train` knows nothing of Optuna: it reads its config, asks `run` for seeds, reports, saves and
restores. `suggest` is this model's own search space, beside hpo's optimizer and schedule ones.
"""

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """1,797 images in a fixed random split: 1,077 train, 360 val, 360 test."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16  # pixels are 0..16
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    parts = {"test": order[:360], "val": order[360:720], "train": order[720:]}
    return {name: (x[i], torch.tensor(y)[i]) for name, i in parts.items()}


def build(config: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    c = config["model.channels"]
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),  # (B, c, 8, 8)
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2c, 4, 4)
        nn.Flatten(), nn.Dropout(config["model.dropout"]), nn.Linear(2 * c * 16, 10),
    )  # fmt: skip


def optimizer(model: nn.Module, config: dict) -> torch.optim.Optimizer:
    name, lr, decay = config["optim.name"], config["optim.lr"], config["optim.weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr, config["optim.momentum"], weight_decay=decay)
    betas = (config["optim.beta1"], config["optim.beta2"])
    family = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return family(model.parameters(), lr, betas=betas, weight_decay=decay)


def schedule(config: dict) -> callable:
    """Linear warmup, then cosine or linear decay to a floor, or constant: a factor per step."""
    steps, floor = config["train.max_steps"], config["schedule.min_lr_frac"]
    warmup = round(config["schedule.warmup_frac"] * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
        shape = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress}
        return shape.get(config["schedule.name"], 1.0) * (1 - floor) + floor

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(config: dict, run) -> None:
    data = splits()
    model = build(config, seed=run.seed("init"))
    opt = optimizer(model, config)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, schedule(config))
    order = torch.Generator().manual_seed(run.seed("data"))  # the batches' order
    step = run.restore(model=model, optimizer=opt, schedule=lr, order=order)  # 0, or a retry's
    x, y = data["train"]
    while step < config["train.max_steps"]:
        batch = torch.randint(len(y), (config["train.batch_size"],), generator=order)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        step += 1
        if step % config["train.eval_interval"] == 0 or step == config["train.max_steps"]:
            val_loss, accuracy = evaluate(model, *data["val"])
            metrics = {"train/loss": loss.item(), "val/loss": val_loss, "val/accuracy": accuracy}
            run.report(step, metrics)  # raises to stop: pruned, diverged
            run.save(step, model=model, optimizer=opt, schedule=lr, order=order)
    if run.scores_test:  # hpo.validate: the best report's weights on the test split
        run.restore(model=model, best=True)
        test_loss, test_accuracy = evaluate(model, *data["test"])
        run.report_test({"test/loss": test_loss, "test/accuracy": test_accuracy})


def suggest(trial, *, channels=(8, 64), dropout=(0.0, 0.5)) -> dict:
    """This model's own search space: width (log-uniform) and dropout."""
    return {
        "model.channels": trial.suggest_int("model.channels", *channels, log=True),
        "model.dropout": trial.suggest_float("model.dropout", *dropout),
    }
