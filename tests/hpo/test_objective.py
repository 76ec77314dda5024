"""The record never lies: what a trial stores as its parameters is what its config trained, and
a trial stopped for any reason says why."""

import time

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from hpo import space
from hpo.objective import Objective
from hpo.record import TrialRecord
from hpo.storage import Storage
from hpo.study_spec import load_study_spec, study_names
from tests.helpers import run_hpo, sets, sqlite_url

TINY = sets(
    "train.max_steps=20", "train.eval_interval=10", "train.eval_batches=1", "data.max_chars=200000"
)
# the own-model examples have only the settings their functions read
TINY_OF = {
    "digits": sets("train.max_steps=20", "train.eval_interval=10"),
    "digits_lightning": sets("train.max_steps=20", "train.eval_interval=10"),
    "digits_script": sets("train.max_steps=20", "train.eval_interval=10"),
    "kaomoji_lora": sets("model.layers=1", "train.max_steps=10", "train.eval_interval=5"),
}


def manifest_agrees_with_params(t: optuna.trial.FrozenTrial, spec, sets) -> None:
    flat = TrialRecord.of(t).manifest["config"]
    # a parameter named after a config key is that key's trained value
    for name, value in t.params.items():
        if name in flat:
            assert flat[name] == value, (t.number, name)
    # every value the space derives from the parameters (betas from 1 - beta, batch size from
    # its log2, width from heads x head size) is the trained one, and so is everything else
    overrides = space.suggest(FixedTrial(t.params, t.number), spec.search_space)
    for key, value in overrides.items():
        assert flat[key] == value, (t.number, key)
    # and the rest is the study's fixed config, its step budget rescaled to equal tokens when
    # the batch size or context is tuned (the trainable's budget hook)
    fixed = spec.fixed_config(sets)
    assert flat == spec.trainable().budget(spec.config_with(overrides, sets=sets), fixed)


@pytest.mark.slow
@pytest.mark.parametrize("study", study_names())
def test_every_trial_of_every_shipped_study_trained_what_it_records(study, tmp_path, cache_dir):
    url = sqlite_url(tmp_path)
    tiny = TINY_OF.get(study, TINY)
    run_hpo(tmp_path, "--study", study, "--trials", "4", "--sampler", "random", *tiny)
    stored = optuna.load_study(study_name=study, storage=url)
    spec, sets = load_study_spec(study), stored.user_attrs["hpo.sets"]
    trials = stored.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 4
    for t in trials:
        assert TrialRecord.of(t).manifest is not None or TrialRecord.of(t).stop_reason == "diverged"
        if TrialRecord.of(t).manifest is not None:
            manifest_agrees_with_params(t, spec, sets)


class InterruptingSampler(optuna.samplers.RandomSampler):
    """Ctrl-C arriving while the space is being sampled."""

    def sample_independent(self, *args, **kwargs):
        raise KeyboardInterrupt


def test_ctrl_c_while_sampling_leaves_a_reason(tmp_path, cache_dir):
    study = optuna.create_study(sampler=InterruptingSampler())
    objective = Objective(load_study_spec("smoke"), sets={}, target=9, checkpoint_root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    (t,) = study.trials
    assert t.state == TrialState.FAIL and TrialRecord.of(t).stop_reason == "interrupted"


def test_a_trial_failed_by_optunas_own_stale_check_says_why(tmp_path):
    # Optuna fails silent trials itself at the start of every trial; the reason must be on the
    # record whichever worker's check gets there first (hpo.storage.Storage writes it)
    storage = Storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # the worker is gone: no beat for longer than the grace period
    optuna.storages.fail_stale_trials(study)
    dead = study.trials[0]
    record = TrialRecord.of(dead)
    assert dead.state == TrialState.FAIL
    assert record.stop_reason == "crashed" and "no heartbeat" in record.fail_reason
