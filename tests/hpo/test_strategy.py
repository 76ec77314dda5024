"""The sampler and pruner a study gets."""

from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo import space
from hpo.session import RunRequest, load_request, open_study
from hpo.strategy import make_sampler
from hpo.study_spec import load_study_spec


def _ask_x(study: optuna.Study) -> float:
    trial = study.ask()  # left running, as another worker's trial is
    return trial.suggest_float("x", 0.0, 1.0)


def test_a_single_process_worker_still_steers_clear_of_other_workers_running_trials():
    """Several one-process workers (hpo.worker on several machines) share a study: each one's
    TPE must count the others' running trials (the constant liar), or, given the same history,
    two of them propose the same point."""
    spec = load_study_spec("smoke")

    def study_with_history(sampler):
        study = optuna.create_study(sampler=sampler)
        for i in range(20):
            x = (i * 0.37) % 1.0
            study.add_trial(
                optuna.trial.create_trial(
                    params={"x": x},
                    distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                    value=(x - 0.3) ** 2,
                )
            )
        return study

    def hpo_sampler():
        return make_sampler(spec, name="tpe", seed=7, worker=0, n_existing=20)

    study = study_with_history(hpo_sampler())
    first = _ask_x(study)
    study.sampler = hpo_sampler()  # another worker, the same seed and the same history
    assert _ask_x(study) != first  # the running trial is counted

    # the control: without the liar the second worker proposes exactly the first one's point
    def without_liar():
        return optuna.samplers.TPESampler(
            seed=7, n_startup_trials=3, multivariate=True, group=True, constant_liar=False
        )

    plain = study_with_history(without_liar())
    first = _ask_x(plain)
    plain.sampler = without_liar()
    assert _ask_x(plain) == first


def test_baseline_first_makes_the_baseline_the_first_trial_once(tmp_path, monkeypatch):
    """sampler.baseline_first: a new study's first trial, whichever backend asks (both ask the
    study), trains exactly the study's baseline; reopening the study does not queue it again."""
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    study_file = tmp_path / "study.yaml"
    smoke = Path(load_study_spec("smoke").path).read_text()
    sampler = "sampler: {name: tpe, n_startup_trials: 3"
    assert sampler in smoke
    study_file.write_text(smoke.replace(sampler, sampler + ", baseline_first: true"))
    request = RunRequest(study=str(study_file), storage=f"sqlite:///{tmp_path}/hpo.db")
    checked = load_request(request)
    study, _ = open_study(request, checked)
    trial = study.ask()
    overrides = space.suggest(trial, checked.spec.search_space)
    baseline = checked.spec.baseline_config()
    assert overrides == {key: baseline[key] for key in overrides}
    assert overrides["optim.lr"] == 1e-3  # smoke's baseline, not a sampled value
    study.tell(trial, 1.0)
    study, _ = open_study(request, checked)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
