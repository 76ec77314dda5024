import json
import logging
import math
import runpy
import signal
import subprocess
import sys

import pytest
import torch

from trainers import DivergedError, OutOfMemoryError, StopTraining, checkpoint, train
from trainers.data import load_data


def test_loss_falls_on_a_tiny_config(tiny_cfg):
    result = train(tiny_cfg)
    losses = [row["val/loss"] for row in result.history]
    vocab = result.data["vocab_size"]
    assert [row["step"] for row in result.history] == [20, 40, 60]
    assert losses[0] < math.log(vocab)  # better than a uniform guess after 20 steps
    assert losses[-1] < losses[0] - 0.3
    assert result.best_val_loss == min(losses) and result.best_step in (20, 40, 60)
    assert result.stop_reason == "max_steps" and result.steps == 60
    assert result.tokens == 60 * 8 * 32
    assert result.tokens_per_s > 0 and result.n_params > 0
    # chars ~ bytes here
    assert result.metrics["val/bpb"] == pytest.approx(losses[-1] / math.log(2))


def test_same_seed_same_losses_other_seed_other_losses(tiny_cfg):
    cfg = tiny_cfg.with_overrides({"model.dropout": 0.1})
    a, b = train(cfg), train(cfg)
    c = train(cfg.with_overrides({"train.seed": 7}))
    assert [r["train/loss"] for r in a.history] == [r["train/loss"] for r in b.history]
    assert [r["val/loss"] for r in a.history] == [r["val/loss"] for r in b.history]
    assert a.history[-1]["val/loss"] != c.history[-1]["val/loss"]
    assert a.seeds["data"] != a.seeds["init"] != a.seeds["dropout"]


def test_resume_reproduces_the_uninterrupted_run(tiny_cfg, tmp_path):
    # dropout: the RNG state must be restored too
    cfg = tiny_cfg.with_overrides({"model.dropout": 0.1})
    straight = train(cfg, checkpoint_dir=tmp_path / "a")

    def interrupt(step, metrics):
        if step == 40:
            raise StopTraining("interrupted")

    first = train(cfg, checkpoint_dir=tmp_path / "b", report=interrupt)
    assert first.stop_reason == "interrupted" and first.steps == 40
    resumed = train(cfg, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from == 40 and resumed.steps == 60
    assert resumed.history == [
        {
            **row,
            "system/tokens_per_s": resumed.history[i]["system/tokens_per_s"],
            "system/peak_mem_mb": resumed.history[i]["system/peak_mem_mb"],
        }
        for i, row in enumerate(straight.history)
    ]
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    assert best["step"] == resumed.best_step


def test_corrupt_checkpoint_is_reported_and_training_starts_fresh(tiny_cfg, tmp_path, caplog):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        result = train(tiny_cfg, checkpoint_dir=tmp_path)
    assert "unreadable" in caplog.text
    assert result.resumed_from == 0 and result.steps == 60


def test_checkpoint_of_another_config_is_not_resumed(tiny_cfg, tmp_path, caplog):
    train(tiny_cfg, checkpoint_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        result = train(tiny_cfg.with_overrides({"optim.lr": 1e-3}), checkpoint_dir=tmp_path)
    assert "another config" in caplog.text and result.resumed_from == 0


def test_report_sees_every_evaluation_and_can_stop(tiny_cfg):
    seen = []

    def report(step, metrics):
        seen.append((step, set(metrics)))
        if step == 40:
            raise StopTraining("pruned")

    result = train(tiny_cfg, report=report)
    assert [s for s, _ in seen] == [20, 40]
    assert {"train/loss", "val/loss", "val/bpb", "system/tokens_per_s"} <= seen[0][1]
    assert result.stop_reason == "pruned" and result.steps == 40


def test_other_callback_exceptions_propagate(tiny_cfg):
    def report(step, metrics):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        train(tiny_cfg, report=report)


def test_non_finite_loss_stops_with_its_own_error(tiny_cfg):
    cfg = tiny_cfg.with_overrides(
        {"optim.name": "sgd", "optim.lr": 1e12, "optim.grad_clip": 0.0, "schedule.warmup_frac": 0.0}
    )
    with pytest.raises(DivergedError) as err:
        train(cfg)
    assert 1 <= err.value.step < 60
    assert f"at step {err.value.step}" in str(err.value)


def test_patience_stops_a_run_that_no_longer_improves(tiny_cfg):
    # an SGD step this small underflows: the weights, and so the val loss, never change
    cfg = tiny_cfg.with_overrides({"optim.name": "sgd", "optim.lr": 1e-30, "train.patience": 1})
    result = train(cfg)
    assert result.stop_reason == "early_stopped" and result.steps == 40


@pytest.mark.parametrize("name", ["adam", "sgd"])
@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_every_optimizer_and_schedule_trains(tiny_cfg, name, schedule):
    lr = 3e-3 if name == "adam" else 0.3
    cfg = tiny_cfg.with_overrides(
        {
            "optim.name": name,
            "optim.lr": lr,
            "optim.nesterov": name == "sgd",
            "schedule.name": schedule,
        }
    )
    result = train(cfg)
    assert result.history[-1]["val/loss"] < result.history[0]["val/loss"]


def test_schedule_warms_up_then_decays_to_the_floor(tiny_cfg):
    cfg = tiny_cfg.with_overrides({"schedule.warmup_frac": 0.5, "schedule.min_lr_frac": 0.1})
    lrs = [row["lr"] for row in train(cfg).history]  # used by steps 20, 40, 60 (30 warmup)
    assert lrs[0] < lrs[1] <= 3e-3
    assert lrs[2] == pytest.approx(3e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_last_step_trains_at_the_floor(tiny_cfg, schedule):
    # 20 steps, 1 of warmup: the decay must end on the last step taken, not one past it
    cfg = tiny_cfg.with_overrides(
        {
            "schedule.name": schedule,
            "schedule.warmup_frac": 0.05,
            "schedule.min_lr_frac": 0.1,
            "train.max_steps": 20,
            "train.eval_interval": 10,
        }
    )
    lrs = [row["lr"] for row in train(cfg).history]
    assert lrs[-1] == pytest.approx(0.1 * 3e-3) and lrs[0] > lrs[-1]


def test_a_finite_loss_far_above_a_uniform_guess_is_divergence(tiny_cfg):
    # adam at lr 50: the loss stays finite but is thousands of times a uniform guess's
    cfg = tiny_cfg.with_overrides({"optim.lr": 50.0, "schedule.warmup_frac": 0.0})
    with pytest.raises(DivergedError) as err:
        train(cfg)
    vocab = load_data(cfg.data, block_size=cfg.model.block_size).vocab_size
    assert err.value.limit == pytest.approx(2 * math.log(vocab))
    assert math.isfinite(err.value.loss) and err.value.loss > err.value.limit


def test_best_weights_are_saved_before_the_state_that_points_at_them(
    tiny_cfg, tmp_path, monkeypatch
):
    # a crash between the two writes must leave a last.pt whose best step has its weights
    written = []
    save = checkpoint.save
    monkeypatch.setattr(
        checkpoint, "save", lambda path, state: (written.append(path.name), save(path, state))
    )
    train(tiny_cfg, checkpoint_dir=tmp_path)
    assert written[:2] == ["best.pt", "last.pt"]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_hugging_face_family_trains_a_few_steps(tiny_cfg, model_type):
    cfg = tiny_cfg.with_overrides(
        {"model.family": "hf", "model.hf_config": model_type, "train.max_steps": 40}
    )
    result = train(cfg)
    assert result.history[-1]["val/loss"] < result.history[0]["val/loss"]
    assert result.n_params > 0


def test_hf_pretrained_checkpoint_is_fine_tuned(tiny_cfg, tmp_path):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "ckpt")
    cfg = tiny_cfg.with_overrides(
        {
            "model.family": "hf",
            "model.hf_config": str(tmp_path / "ckpt"),
            "model.pretrained": True,
            "train.max_steps": 20,
        }
    )
    assert math.isfinite(train(cfg).best_val_loss)


def test_out_of_memory_is_its_own_error(tiny_cfg):
    # a 2^17-wide layer needs ~200 GB: the allocator refuses at once on this 24 GB machine
    cfg = tiny_cfg.with_overrides({"model.n_embd": 2**17, "model.n_head": 1})
    with pytest.raises(OutOfMemoryError, match="out of memory on cpu"):
        train(cfg)


def test_cli_prints_one_json_line(tiny_cfg, cache_dir, capsys, monkeypatch):
    sets = [
        f"--set={k}={v}" for k, v in tiny_cfg.flat().items() if v is not None and k != "data.splits"
    ]
    # `python -m trainers.train` in this process (the next test runs it as a process). Run, not
    # imported: importing the module would bind it over the package's train function
    monkeypatch.setattr(sys, "argv", ["trainers.train", *sets, "--no-progress"])
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_module("trainers.train", run_name="__main__", alter_sys=True)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert done.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["steps"] == 60 and summary["stop_reason"] == "max_steps"
    assert summary["val/loss"] < 3.5
    # the parameter count goes by its one name everywhere
    assert summary["n_params"] > 0 and "params" not in summary


def test_cli_refuses_a_bad_override_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "trainers.train", "--set", "model.n_layr=2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "unknown config key 'model.n_layr'" in out.stderr and "Traceback" not in out.stderr
