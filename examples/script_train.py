"""A training script that knows nothing of hpo: flags in, lines out. How a script in any
language goes under hpo (hpo.integrations.script, studies/digits_script.yaml):

    python examples/script_train.py --lr 0.003 --hidden 64 --out /tmp/run --seed 0

It prints one `hpo.report step=... val/accuracy=...` line per evaluation and `hpo.save
step=...` after each checkpoint, resumes from the checkpoint in --out if there is one, and with
HPO_SCORE_TEST=1 prints `hpo.test ...` for the best evaluation's weights. A small MLP on
scikit-learn's digits, the same fixed split as examples/digits.py.
"""

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def data() -> dict:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = {"test": order[:360], "val": order[360:720], "train": order[720:]}
    return {name: (x[i], y[i]) for name, i in parts.items()}


@torch.no_grad()
def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    splits = data()
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    opt = torch.optim.Adam(model.parameters(), args.lr)
    order = torch.Generator().manual_seed(args.seed)
    step, best = 0, -1.0
    saved = args.out / "state.pt"
    if saved.exists():  # a retry: go on from the last checkpoint
        state = torch.load(saved, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        order.set_state(state["order"])
        step, best = state["step"], state["best"]
    x, y = splits["train"]
    while step < args.steps:
        batch = torch.randint(len(y), (args.batch_size,), generator=order)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            val_loss, accuracy = scores(model, *splits["val"])
            print(f"hpo.report step={step} val/loss={val_loss} val/accuracy={accuracy}", flush=True)
            if accuracy > best:
                best = accuracy
                torch.save(model.state_dict(), args.out / "best.pt")
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step}
            torch.save({**state, "order": order.get_state(), "best": best}, args.out / "tmp.pt")
            os.replace(args.out / "tmp.pt", saved)  # atomic: a kill never leaves half a file
            print(f"hpo.save step={step}", flush=True)
    if os.environ.get("HPO_SCORE_TEST") == "1":
        model.load_state_dict(torch.load(args.out / "best.pt"))
        loss, accuracy = scores(model, *splits["test"])
        print(f"hpo.test test/loss={loss} test/accuracy={accuracy}")


def suggest(trial, *, hidden: tuple[int, int] = (16, 256)) -> dict:
    """The search space of the study that runs this script: its width (log-uniform)."""
    return {"model.hidden": trial.suggest_int("model.hidden", *hidden, log=True)}


if __name__ == "__main__":
    main()
