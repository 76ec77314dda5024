"""Sequential validation keeps its false-positive rate and stops early on clear differences.

Simulated paired differences, no training: what hpo.validate would decide at each look.
"""

import numpy as np
import optuna
import pytest

from hpo.validation.report import report
from hpo.validation.sequential import Plan, look, looks, settle_plan, spent
from hpo.validation.stats import ALPHA, compare_paired

REPS = 3000
# the false-positive rate of REPS simulated validations: 5% plus three standard errors
FPR_LIMIT = ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / REPS)


def null_differences(dist: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Differences of two configs that are equally good: symmetric about 0."""
    if dist == "normal":
        return rng.normal(0, 0.02, n)
    if dist == "heavy":  # Student t with 3 degrees of freedom: outlying seeds
        return rng.standard_t(3, n) * 0.02
    # a few seeds far off, in either direction: symmetric but bimodal
    return rng.choice((-1.0, 1.0), n) * rng.lognormal(-4, 1, n)


def sequential(d: np.ndarray, max_seeds: int) -> tuple[bool, int]:
    """(beyond noise, seeds used) as hpo.validate decides, look by look."""
    for n in looks(max_seeds):
        at = look(d[:n], max_seeds)
        if at.decided:
            return at.stop, n
    raise AssertionError("the last look always decides")


@pytest.mark.parametrize("dist", ["normal", "heavy", "bimodal"])
@pytest.mark.parametrize("max_seeds", [8, 10])
def test_the_false_positive_rate_stays_at_5_percent(dist, max_seeds):
    rng = np.random.default_rng(7)
    calls = [sequential(null_differences(dist, max_seeds, rng), max_seeds)[0] for _ in range(REPS)]
    rate = np.mean(calls)
    assert rate <= FPR_LIMIT
    assert rate >= 0.02  # and the looks do not throw most of the 5% away


def test_looking_twice_at_the_plain_level_would_not_keep_it():
    # the reason for the boundaries: stopping at the first look with p < 0.05 at 6 or 10 seeds
    rng = np.random.default_rng(7)
    naive = 0
    for _ in range(REPS):
        d = null_differences("normal", 10, rng)
        # each look's p is the fixed-n permutation p (test_each_looks_p_is_...)
        naive += look(d[:6], 10).p_value < ALPHA or look(d, 10).p_value < ALPHA
    assert naive / REPS > FPR_LIMIT


def test_a_clear_difference_stops_at_the_first_look():
    rng = np.random.default_rng(3)
    # the case: a difference many standard deviations wide
    runs = [sequential(rng.normal(-0.05, 0.02, 10), 10) for _ in range(300)]
    assert all(stop for stop, _ in runs)
    assert np.mean([n == 6 for _, n in runs]) >= 0.95  # 6 of 10 seeds: 40% of the runs saved


def test_a_moderate_difference_still_reaches_the_verdict_most_of_the_time():
    rng = np.random.default_rng(3)
    runs = [sequential(rng.normal(-0.02, 0.02, 10), 10) for _ in range(REPS // 3)]
    power = np.mean([stop for stop, _ in runs])
    # d_z = 1 at 10 seeds: about 0.79 for the fixed test; the early look costs a little of it
    assert 0.6 <= power <= 0.85
    assert np.mean([n for _, n in runs]) < 9  # and saves seeds on average


def test_each_looks_p_is_the_fixed_n_permutation_p():
    rng = np.random.default_rng(1)
    for n in (6, 10):
        d = rng.normal(-0.01, 0.02, n)
        assert look(d, 10).p_value == pytest.approx(compare_paired(d, np.zeros(n))["p_value"])


def test_boundaries_spend_the_plan_and_the_last_look_decides():
    assert looks(10) == [6, 10] and looks(20) == [6, 10, 14, 18, 20] and looks(5) == [5]
    assert spent(10, 10) == pytest.approx(ALPHA) and spent(6, 10) < ALPHA
    first = look([-0.01] * 6, 10)  # six of six one way: the smallest p 6 pairs can give
    assert first.p_value == 2 / 2**6 and first.boundary == first.p_value and first.stop
    mixed = look([-0.01, 0.01, -0.02, 0.005, -0.01, 0.002], 10)
    assert not mixed.decided and mixed.boundary == first.boundary
    last = look([-0.01, 0.01, -0.02, 0.005, -0.01, 0.002, -0.01, -0.02, -0.01, -0.015], 10)
    assert last.final and last.decided and 0 < last.boundary < ALPHA


def test_a_single_look_is_the_fixed_test():
    d = [-0.01, -0.02, -0.01, 0.003, -0.01, -0.02]
    at = look(d, 6)
    assert at.final and at.boundary <= ALPHA
    assert at.stop == (compare_paired(d, [0.0] * 6)["p_value"] < ALPHA)


def test_a_seed_count_between_looks_is_refused():
    with pytest.raises(ValueError, match="not a look"):
        look([0.01] * 7, 10)


@pytest.mark.slow  # 3000 simulated validations with up to 20 sampled-pattern looks: 2 min
def test_asking_for_more_seeds_after_a_verdict_cannot_re_roll_it():
    """ "Run 10 seeds, and if that is not significant rerun with --seeds 20": the rerun goes on
    under the first run's plan, so the false-positive rate stays at 5%. Rebuilding the plan
    from each run's --seeds (as hpo.validate did) reached 7.5% in 360 null runs."""
    rng = np.random.default_rng(11)
    kept = rerolled = 0
    for _ in range(REPS):
        d = null_differences("normal", 20, rng)
        first, note = settle_plan(None, seeds=10, sequential=True)
        assert note is None
        stop, _ = sequential(d[: first.max_seeds], first.max_seeds)
        if not stop:
            again, note = settle_plan(first.to_json(), seeds=20, sequential=True)
            assert again == first and "up to 10 seeds" in note
            kept += sequential(d[: again.max_seeds], again.max_seeds)[0]
            rerolled += sequential(d, 20)[0]  # a new plan on the results already seen
        kept += stop
        rerolled += stop
    assert kept / REPS <= FPR_LIMIT
    assert rerolled / REPS > FPR_LIMIT  # the re-roll this rule stops


def test_a_plan_is_followed_as_asked_the_first_time():
    assert settle_plan(None, seeds=20, sequential=False) == (Plan(20, False), None)
    same = settle_plan({"max_seeds": 20, "sequential": False}, seeds=20, sequential=False)
    assert same == (Plan(20, False), None)


def test_beyond_13_seeds_one_p_per_look_in_the_stop_the_verdict_and_the_report():
    """Beyond 2^13 sign patterns the patterns are sampled: once, for the whole plan, so a
    look's p and boundary are the same numbers wherever they are read."""
    rng = np.random.default_rng(5)
    d = rng.normal(-0.012, 0.02, 20)
    at = look(d[:14], 20)
    # the boundary of look 10 is the same when the test stands at 14 seeds or at 18
    earlier = [look(d[:n], 20) for n in (10, 14, 18)]
    assert look(d[:14], 20) == at and earlier[1] == at
    study = optuna.create_study()
    study.set_user_attr("hpo.spec", {"objective": {"metric": "val/loss"}})
    study.add_trial(optuna.trial.create_trial(value=1.0))
    base = [{"test/loss": 2.0, "val/loss": 2.0}] * 14
    rows = [{"test/loss": 2.0 + x, "val/loss": 2.0} for x in d[:14]]
    c = report(study, {"trial_0": rows, "baseline": base}, max_seeds=20)["comparisons"]["trial_0"]
    assert c["p_value"] == c["p_adjusted"] == c["sequential"]["p_value"] == at.p_value
    assert c["sequential"]["boundary"] == at.boundary
    beyond = c["verdict"].startswith("better than the baseline beyond")
    excludes_zero = c["ci_high"] < 0
    assert beyond == (at.stop and excludes_zero)


def test_an_early_stop_reports_the_interval_that_matches_its_boundary():
    study = optuna.create_study()
    study.set_user_attr("hpo.spec", {"objective": {"metric": "val/loss"}})
    study.add_trial(optuna.trial.create_trial(value=1.0))
    d = [-0.05, -0.04, -0.06, -0.05, -0.045, -0.055]  # clear: stops at the first look
    base = [{"test/loss": 2.0, "val/loss": 2.0}] * 6
    rows = [{"test/loss": 2.0 + x, "val/loss": 2.0} for x in d]
    c = report(study, {"trial_0": rows, "baseline": base}, max_seeds=10)["comparisons"]["trial_0"]
    seq = c["sequential"]
    assert seq["stopped_early"]
    # the repeated-confidence interval, at the look's stricter level, is the wider one
    assert seq["rci_low"] < c["ci_low"] < c["mean_diff"] < c["ci_high"] < seq["rci_high"]
