"""Resuming with changed optimizer settings: what population-based training does on exploit."""

import shutil

import pytest
import torch

from trainers import StopTraining, train


def stop_at(step_to_stop):
    def report(step, metrics):
        if step == step_to_stop:
            raise StopTraining("paused")

    return report


@pytest.fixture
def paused(tiny_cfg, tmp_path):
    """A constant-lr run stopped at step 40 of 60: its last.pt holds step 40."""
    cfg = tiny_cfg.with_overrides({"schedule.name": "constant", "schedule.warmup_frac": 0.0})
    result = train(cfg, checkpoint_dir=tmp_path / "paused", report=stop_at(40))
    assert result.steps == 40
    return cfg, tmp_path / "paused"


def copy(src, tmp_path, name):
    shutil.copytree(src, tmp_path / name)
    return tmp_path / name


def test_allowed_changes_resume_at_the_stored_step_with_the_new_values(paused, tmp_path):
    cfg, ckpt = paused
    changed = cfg.with_overrides(
        {"optim.lr": 1e-2, "optim.weight_decay": 0.02, "model.dropout": 0.1}
    )
    rows = []
    result = train(
        changed,
        checkpoint_dir=copy(ckpt, tmp_path, "b"),
        allow_changes=True,
        report=lambda step, m: rows.append((step, m["lr"])),
    )
    assert result.resumed_from == 40 and result.steps == 60
    assert rows == [(60, pytest.approx(1e-2))]  # the new lr, not the checkpoint's 3e-3
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    matrices, others = state["optimizer"]["param_groups"]
    assert matrices["lr"] == pytest.approx(1e-2) and matrices["weight_decay"] == 0.02
    assert others["weight_decay"] == 0.0  # norms and biases are never decayed
    assert state["config"]["model"]["dropout"] == 0.1


def test_unchanged_config_resumes_exactly_as_before(paused, tmp_path):
    cfg, ckpt = paused
    plain = train(cfg, checkpoint_dir=copy(ckpt, tmp_path, "b"))
    allowed = train(cfg, checkpoint_dir=copy(ckpt, tmp_path, "c"), allow_changes=True)
    assert plain.resumed_from == allowed.resumed_from == 40

    def losses(history):  # speed and memory vary from run to run; the numbers must not
        return [{k: v for k, v in row.items() if not k.startswith("system/")} for row in history]

    assert losses(plain.history) == losses(allowed.history)


@pytest.mark.parametrize(
    ("overrides", "allow"),
    [
        ({"optim.lr": 1e-2}, False),  # a change the caller did not allow
        ({"train.max_steps": 80}, True),  # shapes the schedule: never resumable
        ({"optim.name": "sgd"}, True),  # another optimizer's state
    ],
)
def test_other_changes_start_fresh(paused, tmp_path, caplog, overrides, allow):
    cfg, ckpt = paused
    result = train(
        cfg.with_overrides(overrides),
        checkpoint_dir=copy(ckpt, tmp_path, "b"),
        allow_changes=allow,
        report=stop_at(20),
    )
    assert result.resumed_from == 0 and "another config" in caplog.text
