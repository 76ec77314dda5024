import pytest

from hpo.errors import UsageError
from hpo.study_spec import load_study_spec, study_names


def test_every_shipped_study_validates():
    names = study_names()
    assert {"lr_sweep", "arch_sweep", "full_sweep", "smoke"} <= set(names)
    for name in names:
        spec = load_study_spec(name)
        assert spec.description and spec.trials >= 1 and spec.search_space
        spec.baseline_config()  # the baseline is a config the trainer accepts


VALID = """
description: test
search_space:
  optimizer: {lr: [1.0e-4, 1.0e-2]}
trainer: {train.max_steps: 20}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            VALID + "colour: blue\n",
            "unknown key 'colour'; valid keys here: description, objective, trials",
        ),
        (
            VALID + "pruner: {name: hyperband, reduction: 3}\n",
            "unknown key 'pruner.reduction'; valid keys here: name, reduction_factor",
        ),
        (
            VALID + "sampler: {name: bayes}\n",
            "sampler.name: Input should be 'tpe', 'random', 'qmc', 'cmaes' or 'gp'",
        ),
        (VALID + "trials: 0\n", "trials: Input should be greater than or equal to 1"),
        (
            "description: x\nsearch_space: {optimizer: {lr: [1.0e-2, 1.0e-4]}}\n",
            "search_space: optimizer.lr: low must be below high",
        ),
        (
            "description: x\nsearch_space: {optimizer: {lr: [0, 1.0e-2]}}\n",
            "a log-scale range needs low > 0",
        ),
        (
            "description: x\nsearch_space: {optimizer: {lrr: [1, 2]}}\n",
            "unknown bound optimizer.lrr; valid for optimizer: lr, names",
        ),
        (
            "description: x\nsearch_space: {optimiser: {}}\n",
            "unknown search space 'optimiser'; valid: optimizer, batch_size",
        ),
        (
            "description: x\nsearch_space: {}\n",
            "search_space: Dictionary should have at least 1 item",
        ),
        (
            VALID.replace("train.max_steps", "train.max_stepz"),
            "unknown config key 'train.max_stepz' (did you mean 'max_steps'?)",
        ),
        (
            VALID + "baseline: {optim.lr: fast}\n",
            "optim.lr expects a value of type float, but got 'fast'",
        ),
        (
            VALID + "sampler: {baseline_first: true}\n",
            "sampler.baseline_first: the study has no baseline; add one or turn this off",
        ),
        (
            VALID + "sampler: {baseline_first: true}\nbaseline: {optim.lr: 0.5}\n",
            "sampler.baseline_first: the baseline is not a point of the search space "
            "(optim.lr=0.5 lies outside its range [0.0001, 0.01]); widen that range",
        ),
        ("description: x\n  search_space: [\n", "malformed YAML at line 2"),
        ("- a\n- b\n", "a study must be a YAML mapping"),
        (
            "description: x\nsearch_space: {architecture: {n_head: [3, 5], head_size: [16, 32]}}\ntrainer: {model.n_embd: 96}\n",
            None,
        ),
    ],
)
def test_bad_specs_are_refused_with_one_clear_line(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    if message is None:  # valid: the space always yields a divisible width
        load_study_spec(str(path))
        return
    with pytest.raises(UsageError) as err:
        load_study_spec(str(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_study_lists_the_shipped_ones():
    with pytest.raises(
        UsageError,
        match="unknown study 'lr_sweeep'; shipped studies: arch_sweep, digits, digits_lightning, digits_script, full_sweep, kaomoji_lora, lr_sweep, pbt, smoke",
    ):
        load_study_spec("lr_sweeep")


def test_sets_are_checked_against_the_trainer():
    with pytest.raises(UsageError, match=r"model\.n_layerz"):
        load_study_spec("smoke", sets={"model.n_layerz": "2"})


def test_checking_a_study_leaves_optunas_verbosity_as_it_was():
    # hpo.run turns Optuna's per-trial tracebacks off; loading the spec must not turn them on
    import optuna

    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        load_study_spec("lr_sweep")
        assert optuna.logging.get_verbosity() == optuna.logging.ERROR
    finally:
        optuna.logging.set_verbosity(before)


@pytest.mark.parametrize(
    ("pruner", "first_rung"),
    [
        ("{name: sha}", 10),  # one evaluation
        ("{name: sha, min_evaluations: 2}", 20),  # travels with the evaluation interval
        ("{name: sha, min_evaluations: 2, min_resource: 7}", 7),  # steps, when given
    ],
)
def test_the_first_rung_counts_evaluations_unless_given_in_steps(tmp_path, pruner, first_rung):
    path = tmp_path / "s.yaml"
    path.write_text(VALID + f"pruner: {pruner}\n")
    spec = load_study_spec(str(path))
    assert spec.min_resource(spec.fixed_config({"train.eval_interval": 10})) == first_rung
