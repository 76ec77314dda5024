"""The seam: what any training function sees of hpo (Run), the contract hpo holds it to, and the
service run on user code through it, in this process (hpo.tune with tests/fakes.py)."""

from __future__ import annotations

import contextlib
import math
import pickle
import re

import optuna
import pytest
import torch
from optuna.trial import TrialState

import hpo
from hpo.analysis.analyze import analyze
from hpo.errors import StudyFailedError, UsageError
from hpo.record import TrialRecord
from hpo.seam import Config, ContractError, Diverged, Run, Sink, StopTrial, execute
from hpo.session import RunRequest, load_request
from hpo.trainable import FunctionTrainable, load_trainable
from hpo.validation.replay import replay_trial
from hpo.validation.validate import ValidateRequest, validate_study
from tests import fakes

FAKE = {"x": 0.5, "train.max_steps": 40, "train.eval_interval": 10}


def a_run(tmp_path, config=None, **kw) -> Run:
    kw = {"metric": "val/loss", "minimize": True, "checkpoint_dir": tmp_path / "ckpt", **kw}
    return Run({"train.seed": 0, **(config or {})}, **kw)


def tune_fake(tmp_path, monkeypatch, **kw) -> optuna.Study:
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    settings = {
        "space": {fakes.suggest: {}},
        "config": FAKE,
        "trials": 10,
        "sampler": {"name": "tpe", "n_startup_trials": 4},
        "storage": f"sqlite:///{tmp_path}/hpo.db",
        "study_name": "fake",
        "progress": False,
        **kw,
    }
    return hpo.tune(settings.pop("train", fakes.quadratic), **settings)


# -- the contract --------------------------------------------------------------------------


def test_report_holds_the_function_to_the_contract(tmp_path):
    run = a_run(tmp_path)
    with pytest.raises(ContractError, match="has no 'val/loss', the study objective's metric"):
        run.report(1, {"val/acc": 0.5})
    run.report(10, {"val/loss": 2.0, "train/loss": torch.tensor(2.5)})  # a 0-d tensor is a number
    with pytest.raises(ContractError, match="steps must increase, but step 10 came after step 10"):
        run.report(10, {"val/loss": 1.0})
    with pytest.raises(ContractError, match="step must be a whole number"):
        run.report(20.5, {"val/loss": 1.0})
    with pytest.raises(ContractError, match="'train/loss' must be a number, but got 'high'"):
        run.report(20, {"val/loss": 1.0, "train/loss": "high"})
    # a non-finite objective after healthy reports is divergence: the trial is pruned
    with pytest.raises(Diverged, match="val/loss is nan at step 30"):
        run.report(30, {"val/loss": math.nan})
    assert run.history == [{"step": 10, "val/loss": 2.0, "train/loss": 2.5}]
    # in trial 0, before any healthy report, it is the metric that is broken: the study stops
    first = a_run(tmp_path, trial=0)
    with pytest.raises(ContractError, match="trial 0 reported val/loss = inf at its first"):
        first.report(1, {"val/loss": math.inf})


@pytest.mark.parametrize(
    ("fn", "scores_test", "message"),
    [
        (lambda config, run: None, False, "returned without reporting 'val/loss'"),
        (fakes.steps_go_back, False, "steps must increase"),
        (lambda c, r: r.report(1, {"val/loss": 1.0}), True, "needs the test split scored"),
        (fakes.swallows_what_report_raises, False, "has no 'val/loss'"),
    ],
)
def test_a_function_that_breaks_the_contract_is_told_how(tmp_path, fn, scores_test, message):
    run = a_run(tmp_path, scores_test=scores_test)
    with pytest.raises(ContractError, match=message):
        execute(FunctionTrainable(fn), run)


def test_a_function_that_swallows_the_stop_is_still_stopped(tmp_path):
    class PruneAt20(Sink):
        def report(self, run, step, metrics):
            if step >= 20:
                raise StopTrial("pruned")

    def stubborn(config, run):
        for step in (10, 20, 30):
            with contextlib.suppress(StopTrial):  # a broad except in user code
                run.report(step, {"val/loss": 1.0 / step})

    outcome = execute(FunctionTrainable(stubborn), a_run(tmp_path, sink=PruneAt20()))
    assert outcome.stop_reason == "pruned" and outcome.steps == 20  # step 30 was refused


def test_what_report_raises_crosses_processes():
    """A Ray task's exception comes back to the driver pickled."""
    again = pickle.loads(pickle.dumps(Diverged(30, "val/loss is nan at step 30", value=9.0)))
    assert (again.step, str(again), again.value) == (30, "val/loss is nan at step 30", 9.0)


def test_seeds_are_per_component_and_follow_the_root_seed(tmp_path):
    run = a_run(tmp_path)
    init, data = run.seed("init"), run.seed("data")
    assert init != data and run.seed("init") == init
    assert a_run(tmp_path).seed("init") == init  # the same root: the same seeds (pairing)
    assert a_run(tmp_path, {"train.seed": 1}).seed("init") != init
    assert run.outcome().seeds == {"init": init, "data": data}


def test_the_config_notes_what_the_function_read():
    config = Config({"a": 1, "b": 2, "c": 3})
    config["a"], config.get("b")
    assert config.read == {"a", "b"}
    copied = dict(config)  # a copy reads everything
    assert config.read == {"a", "b", "c"} and type(copied) is dict


# -- checkpoints ---------------------------------------------------------------------------


def small_training(config, run, *, until=None):
    """A model with dropout, an optimizer, a schedule and a data order: every RNG in play."""
    torch.manual_seed(run.seed("init"))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["wd"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    order = torch.Generator().manual_seed(run.seed("data"))
    step = run.restore(model=model, optimizer=opt, schedule=sched, order=order)
    while step < (until or 30):
        x = torch.randn(16, 4, generator=order)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 10 == 0:
            run.report(step, {"val/loss": loss.item()})
            run.save(step, model=model, optimizer=opt, schedule=sched, order=order)
    return model, opt


def test_a_restored_run_continues_exactly_where_it_saved(tmp_path):
    config = {"lr": 1e-2, "wd": 0.1}
    whole, _ = small_training(config, a_run(tmp_path / "a", config))
    small_training(config, a_run(tmp_path / "b", config), until=20)  # then the worker died
    again = a_run(tmp_path / "b", config)
    resumed, _ = small_training(config, again)
    assert again.resumed_from == 20 and [r["step"] for r in again.history] == [10, 20, 30]
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)  # weights, optimizer, schedule, data order and dropout RNG


def test_the_best_reports_weights_are_kept_whichever_comes_first(tmp_path):
    """save-then-report and report-then-save both leave best.pt at the best report."""
    for order in ("save first", "report first"):
        run = a_run(tmp_path / order)
        for step, loss in [(10, 2.0), (20, 1.0), (30, 1.5)]:
            state = {"weights": step}
            if order == "save first":
                run.save(step, state=state)
            run.report(step, {"val/loss": loss})
            if order == "report first":
                run.save(step, state=state)
        best = {}
        assert run.restore(state=best, best=True) == 20 and best == {"weights": 20}, order
        assert run.restore(state=best) == 30 and best == {"weights": 30}, order


def test_a_copy_of_another_configs_save_keeps_its_own_settings(tmp_path):
    """PBT: a member restored from a better member's checkpoint takes its weights and the
    optimizer's state, but trains with its own learning rate and weight decay, at the point of
    the schedule where the donor was."""
    donor = a_run(tmp_path, {"lr": 1e-2, "wd": 0.1})
    donor_model, donor_opt = small_training({"lr": 1e-2, "wd": 0.1}, donor, until=20)
    member = a_run(tmp_path, {"lr": 1e-3, "wd": 0.0})
    model, opt = small_training({"lr": 1e-3, "wd": 0.0}, member, until=20)  # restored at 20
    assert member.resumed_from == 20
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), donor_model.parameters(), strict=True)
    )
    (group,) = opt.param_groups
    assert group["weight_decay"] == 0.0 and group["initial_lr"] == 1e-3
    assert group["lr"] == pytest.approx(donor_opt.param_groups[0]["lr"] / 10)  # 1e-3 / 1e-2


# -- loading a trainable ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nocolon", "expected 'module:function'"),
        ("no_such_package.train:train", "module 'no_such_package.train' does not import"),
        ("tests.fakes:missing", "module 'tests.fakes' has no 'missing'"),
        ("tests.fakes:takes_one_argument", "must take (config, run), but its signature is"),
        ("tests.fakes:NOT_A_FUNCTION", "is a int, not a function"),
    ],
)
def test_an_entry_that_cannot_train_is_one_line(entry, message):
    with pytest.raises(UsageError) as e:
        load_trainable(entry)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_entry_whose_module_fails_on_import_says_why(tmp_path, monkeypatch):
    (tmp_path / "broken_train.py").write_text("import numpy\nraise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="importing module 'broken_train' failed: RuntimeError"):
        load_trainable("broken_train:train")


# -- the service on user code --------------------------------------------------------------


def test_a_user_function_tuned_pruned_and_resumed_in_process(tmp_path, monkeypatch):
    study = tune_fake(tmp_path, monkeypatch, objective="val/accuracy", direction="maximize")
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 10 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.PRUNED in states  # successive halving at the reports' steps
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.best_value == max(t.value for t in trials if t.state == TrialState.COMPLETE)
    for t in trials:
        record = TrialRecord.of(t)
        # the record never lies: the parameter is what the function got, the rest is fixed
        assert record.manifest["config"] == {**FAKE, "x": t.params["x"]}
        assert record.manifest["entry"] == "tests.fakes:quadratic"
        assert record.manifest["code"]["file"] == "tests/fakes.py"  # this repository's commit
        assert record.manifest["seeds"]["noise"] == a_run(tmp_path).seed("noise")  # root 0
        assert record.steps == max(t.intermediate_values)
        assert record.stop_reason == ("pruned" if t.state == TrialState.PRUNED else "finished")
    # --trials is the total: the same call with more trials tops the study up
    study = tune_fake(
        tmp_path, monkeypatch, objective="val/accuracy", direction="maximize", trials=12
    )
    assert len(study.get_trials()) == 12


def test_a_maximized_metric_through_analyze_validate_and_replay(tmp_path, monkeypatch, capsys):
    study = tune_fake(
        tmp_path,
        monkeypatch,
        objective="val/accuracy",
        direction="maximize",
        baseline={"x": 0.9},
    )
    result = analyze(study, resamples=2, out=tmp_path / "report")
    assert result["best"]["value"] == study.best_value  # the highest accuracy
    report = validate_study(ValidateRequest(seeds=6, progress=False), study=study)
    assert report["metric"] == "test/accuracy"
    label = f"trial_{study.best_trial.number}"
    c = report["comparisons"][label]
    assert c["mean_diff"] > 0  # the winner's accuracy is higher
    assert c["verdict"].startswith("better than the baseline beyond seed-to-seed noise")
    # asked again with more seeds: the comparison's plan is the first run's, so the stored
    # results are read under it, nothing is trained, and the verdict cannot be re-rolled
    capsys.readouterr()
    again = validate_study(ValidateRequest(seeds=10, progress=False), study=study)
    assert "planned at its first run with up to 6 seeds" in capsys.readouterr().err
    assert again["seeds"] == 6 and again["comparisons"][label] == c
    replayed = replay_trial(study, study.best_trial.number)
    assert replayed.matches and replayed.tolerance == 0


def test_a_user_function_that_blows_up_is_pruned_where_it_diverged(tmp_path, monkeypatch):
    study = tune_fake(tmp_path, monkeypatch, train=fakes.blows_up_above, trials=6, pruner="none")
    trials = study.get_trials()
    blown = [t for t in trials if t.params["x"] > 0.5]
    assert blown and len(blown) < len(trials)
    for t in blown:  # pruned, not failed: the sampler learns to avoid the region
        record = TrialRecord.of(t)
        assert t.state == TrialState.PRUNED and record.stop_reason == "diverged"
        assert record.fail_reason == "val/loss is nan at step 20" and record.steps == 20
        assert t.intermediate_values[20] == math.inf  # worse than any value a healthy run has


def test_the_functions_own_exception_fails_its_trial_and_the_study_goes_on(tmp_path, monkeypatch):
    with pytest.raises(StudyFailedError, match="the last 5 trials all failed"):
        tune_fake(tmp_path, monkeypatch, train=fakes.raises)
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path}/hpo.db")
    records = [TrialRecord.of(t) for t in study.get_trials()]
    assert len(records) == 5  # one worker went on after each failure, until five in a row
    for record in records:
        assert record.stop_reason == "error"
        assert record.fail_reason == "ZeroDivisionError: division by zero in the user's code"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (fakes.reports_the_wrong_metric, "has no 'val/loss', the study objective's metric"),
        (fakes.nan_at_first_report, "trial 0 reported val/loss = nan at its first report"),
    ],
)
def test_a_contract_broken_in_trial_0_stops_the_study(tmp_path, monkeypatch, train, message):
    with pytest.raises(ContractError, match=message):
        tune_fake(tmp_path, monkeypatch, train=train)
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path}/hpo.db")
    (t,) = study.get_trials()  # nothing after it
    assert t.state == TrialState.FAIL and TrialRecord.of(t).stop_reason == "contract"


def test_a_tuned_key_the_function_never_reads_is_named(tmp_path, monkeypatch, capsys):
    tune_fake(tmp_path, monkeypatch, space=fakes.suggest_with_a_typo, trials=2)
    err = capsys.readouterr().err
    assert err.count("the search space sets 'y', but the training function never read it") == 1
    assert "'x'" not in err


def test_settings_a_user_function_does_not_have_are_refused(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match=re.escape("baseline: unknown config key 'optim.lr'")):
        tune_fake(tmp_path, monkeypatch, baseline={"optim.lr": 1e-3})
    study_file = tmp_path / "fake.yaml"
    study_file.write_text(
        "description: the fake\nsearch_space: {'tests.fakes:suggest': {}}\n"
        "trainer: {entry: 'tests.fakes:quadratic', x: 0.5, train.max_steps: 40,"
        " train.eval_interval: 10}\n"
    )
    with pytest.raises(UsageError, match=re.escape("--set: unknown config key 'train.max_step'")):
        load_request(RunRequest(study=str(study_file), sets=("train.max_step=50",)))
    with pytest.raises(
        UsageError, match=re.escape("unknown bound tests.fakes:suggest.y; valid for")
    ):
        study_file.write_text(study_file.read_text().replace("suggest': {}", "suggest': {y: 1}"))
        load_request(RunRequest(study=str(study_file)))
