"""The three framework adapters (hpo.integrations: Hugging Face Trainer, Lightning, a script)
through one conformance test each, on real training at a tiny budget: they report at the
framework's steps, a pruned run stops at the step it was pruned, a seed gives the same metrics
twice, what a trial records is what the framework received, a kill -9 resumes from the
framework's own checkpoint, and bad input is one line."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import pytest
from optuna.trial import TrialState

from hpo.record import TrialRecord
from hpo.seam import Run, Sink, StopTrial, execute
from hpo.study_spec import load_study_spec
from tests.helpers import (
    counted,
    finish,
    here,
    run_hpo,
    run_ray,
    sets,
    sqlite_url,
    start,
    trials_at,
    trials_so_far,
    wait_for,
)

pytestmark = pytest.mark.slow  # real training: a pretrained encoder, Lightning, processes


@dataclass(frozen=True)
class Adapter:
    study: str
    tiny: tuple[str, ...]  # --set pairs: three evaluations, in seconds
    interval: int

    def config(self, **changes) -> dict:
        pairs = dict(pair.split("=") for pair in self.tiny)
        spec = load_study_spec(self.study)
        config = spec.fixed_config({k: int(v) for k, v in pairs.items()})
        return {**config, **changes}


ADAPTERS = {
    "huggingface": Adapter(
        "kaomoji_lora", ("model.layers=1", "train.max_steps=15", "train.eval_interval=5"), 5
    ),
    "lightning": Adapter("digits_lightning", ("train.max_steps=60", "train.eval_interval=20"), 20),
    "script": Adapter("digits_script", ("train.max_steps=60", "train.eval_interval=20"), 20),
}
METRIC = {"kaomoji_lora": "val/f1_macro", "digits_lightning": "val/accuracy"}


class PruneAt(Sink):
    """Stops the run at its n-th report, as the pruner does."""

    def __init__(self, n: int) -> None:
        self.n, self.steps = n, []

    def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        self.steps.append(step)
        if len(self.steps) == self.n:
            raise StopTrial("pruned")


def train_once(
    adapter: Adapter, folder, *, seed: int = 0, sink: Sink | None = None, test=False, **changes
):
    spec = load_study_spec(adapter.study)
    run = Run(
        adapter.config(**{"train.seed": seed, **changes}),
        metric=spec.objective.metric,
        minimize=spec.objective.minimize,
        checkpoint_dir=folder,
        sink=sink,
        scores_test=test,
    )
    return execute(spec.trainable(), run)


@pytest.mark.parametrize("name", ADAPTERS)
def test_reports_prunes_at_the_step_and_a_seed_gives_the_same_metrics(name, tmp_path):
    adapter = ADAPTERS[name]
    i = adapter.interval
    first = train_once(adapter, tmp_path / "a", test=True)
    assert [row["step"] for row in first.history] == [i, 2 * i, 3 * i]
    assert first.stop_reason == "finished" and first.test_metrics.keys() >= {"test/loss"}
    again = train_once(adapter, tmp_path / "b")
    assert again.history == first.history  # the same seed, the same metrics (CPU)

    pruner = PruneAt(2)
    other = train_once(adapter, tmp_path / "c", seed=1, sink=pruner)
    assert other.stop_reason == "pruned" and pruner.steps == [i, 2 * i]
    assert [row["step"] for row in other.history] == [i, 2 * i]  # stopped there, cleanly
    assert other.history != first.history[:2]  # another seed, other metrics
    # the framework's own checkpoint of the step it stopped at is there for a retry
    saved = {
        "huggingface": tmp_path / "c" / f"checkpoint-{2 * i}",
        "lightning": tmp_path / "c" / "last.ckpt",
        "script": tmp_path / "c" / "state.pt",
    }[name]
    assert saved.exists()


def test_a_trainer_killed_after_its_last_checkpoint_is_retried_to_the_same_result(tmp_path):
    # a kill between the Trainer's last checkpoint and the trial's end: the Trainer resumed at
    # its max_steps would train, evaluate and save a step more (and hpo would report it), in a
    # folder hpo renamed (so its record of the best checkpoint points at a path that is gone)
    adapter = ADAPTERS["huggingface"]
    steps = {"train.max_steps": 10}
    whole = train_once(adapter, tmp_path / "whole", test=True, **steps)
    train_once(adapter, tmp_path / "killed", **steps)  # all its checkpoints written, no test
    (tmp_path / "killed").rename(tmp_path / "retry")
    retried = train_once(adapter, tmp_path / "retry", test=True, **steps)
    assert [row["step"] for row in retried.history] == [5, 10]
    assert retried.history == whole.history and retried.test_metrics == whole.test_metrics
    assert not (tmp_path / "retry" / "checkpoint-11").exists()


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_study_records_what_the_framework_received(name, tmp_path, capsys):
    adapter = ADAPTERS[name]
    here("hpo.run", "--study", adapter.study, "--trials", "3", "--storage",
         sqlite_url(tmp_path), *sets(*adapter.tiny), runs=tmp_path / "runs", capsys=capsys)  # fmt: skip
    trials = counted(trials_at(tmp_path, adapter.study))
    assert len(trials) == 3
    for t in trials:
        record = TrialRecord.of(t)
        config, got = record.manifest["config"], record.manifest["framework"]
        assert sorted(t.intermediate_values)[0] == adapter.interval
        if name == "huggingface":
            assert got["learning_rate"] == t.params["optim.lr"] == config["optim.lr"]
            assert got["per_device_train_batch_size"] == config["train.batch_size"]
            assert got["warmup_steps"] == round(config["schedule.warmup_frac"] * 15)
            assert got["peft"]["r"] == config["lora.r"] == t.params["lora.r"]
            assert got["peft"]["lora_alpha"] == config["lora.alpha_ratio"] * config["lora.r"]
            assert got["peft"]["lora_dropout"] == config["lora.dropout"]
            assert ("dense" in got["peft"]["target_modules"]) == (
                config["lora.targets"] == "attention+mlp"
            )
            assert got["max_steps"] == 15 and got["eval_steps"] == 5
        elif name == "lightning":
            (group,) = got["optimizers"]
            assert group["lr"] == t.params["optim.lr"] == config["optim.lr"]
            assert group["weight_decay"] == config["optim.weight_decay"]
            assert got["max_steps"] == 60 and got["val_check_interval"] == 20
        else:
            argv = got["argv"]
            assert argv[argv.index("--lr") + 1] == str(t.params["optim.lr"])
            assert argv[argv.index("--hidden") + 1] == str(t.params["model.hidden"])
            assert argv[argv.index("--batch-size") + 1] == str(config["train.batch_size"])
            logs = tmp_path / "runs" / adapter.study / "logs" / f"trial_{t.number}"
            assert "hpo.report step=20" in (logs / "stdout.log").read_text()


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_killed_trial_resumes_from_the_frameworks_own_checkpoint(name, tmp_path, env):
    adapter = ADAPTERS[name]
    env = {**env, "HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "3"}
    steps = {"huggingface": 100, "lightning": 600, "script": 600}[name]
    long = [*sets(*adapter.tiny), *sets(f"train.max_steps={steps}")]
    args = ["--study", adapter.study, "--trials", "1", "--pruner", "none", *long]
    proc = start("hpo.run", "--storage", sqlite_url(tmp_path), *args, env=env)

    def mid_trial():
        running = [
            t for t in trials_so_far(tmp_path, adapter.study) if t.state == TrialState.RUNNING
        ]
        return next((t for t in running if len(t.intermediate_values) >= 3), None)

    doomed = wait_for(mid_trial, what="a trial three reports in")
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    reported = max(doomed.intermediate_values)

    run_hpo(tmp_path, *args, env=env)
    trials = trials_at(tmp_path, adapter.study)
    dead = trials[doomed.number]
    assert dead.state == TrialState.FAIL and TrialRecord.of(dead).stop_reason == "crashed"
    (retry,) = [t for t in trials if TrialRecord.of(t).retry_of == doomed.number]
    record = TrialRecord.of(retry)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    # resumed from a checkpoint the framework wrote at a report, not from step 0: the last
    # report's, or the one before it when the kill came between a report and its checkpoint
    # (a framework evaluates, reports, then saves; a checkpoint cut short is not resumed from)
    assert reported - adapter.interval <= record.resumed_from_step <= steps
    assert record.resumed_from_step > 0 and record.resumed_from_step % adapter.interval == 0
    assert sorted(retry.intermediate_values) == list(
        range(adapter.interval, steps + 1, adapter.interval)
    )


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_runs_under_ray_into_the_same_study(name, tmp_path, ray_env):
    adapter = ADAPTERS[name]
    run_ray(tmp_path, ray_env, "--study", adapter.study, "--trials", "3", *sets(*adapter.tiny))
    trials = counted(trials_at(tmp_path, adapter.study))
    assert len(trials) == 3, [(t.number, t.state, TrialRecord.of(t).fail_reason) for t in trials]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        record = TrialRecord.of(t)
        assert record.backend == "ray" and record.manifest["framework"]
        steps = sorted(t.intermediate_values)  # every evaluation, at the framework's steps
        assert steps == list(range(adapter.interval, record.steps + 1, adapter.interval))


def test_pbt_on_a_frameworks_own_checkpoints_is_refused(tmp_path, ray_env):
    # Lightning restores the donor's optimizer from last.ckpt: a perturbed learning rate would
    # be recorded and not trained, so the first exploit stops the study, saying why
    adapter = ADAPTERS["lightning"]
    # 200 steps: a perturbation every 40, so members meet at one and the worst copies the best
    long = [*sets(*adapter.tiny), *sets("train.max_steps=200")]
    err = run_ray(tmp_path, ray_env, "--study", adapter.study, "--trials", "4", "--scheduler",
                  "pbt", *long, expect=2)  # fmt: skip
    assert err.splitlines()[-1].startswith("error: PBT/PB2 cannot perturb a trial whose checkpoints are its framework's own"), err[-2000:]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("huggingface", "train.eval_interval=0", "error: hf.training_arguments: the config needs train.eval_interval as a whole number >= 1, but got 0"),
        ("lightning", "train.max_steps=0", "error: hpl.fit: the config needs train.max_steps as a whole number >= 1, but got 0"),
        ("script", "script.command=nosuchprogram --out {checkpoint_dir}", "error: script.command: cannot run 'nosuchprogram'"),
        ("script", "script.command={python} x.py --lr {optim.lrr}", "error: script.command names {optim.lrr}, which is not a config key"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(name, change, message, tmp_path, capsys):
    adapter = ADAPTERS[name]
    out = here("hpo.run", "--study", adapter.study, "--trials", "2", "--storage",
               sqlite_url(tmp_path), *sets(*adapter.tiny), "--set", change,
               runs=tmp_path / "runs", capsys=capsys, check=False)  # fmt: skip
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert out.returncode == 2 and errors == [out.stderr.splitlines()[-1]], out.stderr
    assert errors[0].startswith(message), out.stderr


def test_a_script_that_exits_non_zero_is_a_failed_trial_with_its_stderr(tmp_path, capsys):
    adapter = ADAPTERS["script"]
    failing = "script.command={python} -c \"import sys; print('x', file=sys.stderr); sys.exit('boom: out of tea')\""
    out = here("hpo.run", "--study", adapter.study, "--trials", "2", "--storage",
               sqlite_url(tmp_path), *sets(*adapter.tiny), "--set", failing,
               runs=tmp_path / "runs", capsys=capsys, check=False)  # fmt: skip
    trials = trials_at(tmp_path, adapter.study)
    # every trial failed, and the study stopped after the last five, saying why
    assert {t.state for t in trials} == {TrialState.FAIL} and out.returncode == 1, out.stderr
    assert out.stderr.splitlines()[-1].startswith("error: the last 5 trials all failed")
    reason = TrialRecord.of(trials[0]).fail_reason
    assert "the script exited with code 1: x | boom: out of tea" in reason
    logs = tmp_path / "runs" / adapter.study / "logs" / "trial_0"
    assert "boom: out of tea" in (logs / "stderr.log").read_text()
