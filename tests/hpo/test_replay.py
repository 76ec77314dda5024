"""hpo.run --replay: a finished trial, trained again from its manifest, gives the same numbers."""

import hashlib
import json

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.errors import UsageError
from hpo.record import ATTR, TrialRecord
from hpo.validation.replay import GPU_TOLERANCE, environment_differences, replay_trial
from tests.helpers import SMOKE_FAST, run_hpo, sets

pytestmark = pytest.mark.slow  # real studies trained and replayed


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache_dir):
    """A finished smoke study: complete trials, and pruned ones stopped before their last step
    (60 steps, successive halving at steps 10 and 30; sampler seed 0 decides which)."""
    root = tmp_path_factory.mktemp("replay")
    run_hpo(root, "--study", "smoke", "--trials", "4", "--pruner", "sha")
    return root, optuna.load_study(study_name="smoke", storage=f"sqlite:///{root}/hpo.db")


def test_replay_of_a_complete_trial_matches_exactly_on_cpu(smoke):
    root, study = smoke
    best = study.best_trial
    out = run_hpo(root, "--study", "smoke", "--replay", str(best.number))
    assert "exact comparison" in out.stdout and "match: all" in out.stdout, out.stdout
    assert f"val/loss @ step {max(best.intermediate_values)}" in out.stdout
    assert "differs" not in out.stdout  # same code, same corpus, same machine


def test_replay_of_a_pruned_trial_stops_where_it_was_pruned(smoke):
    _, study = smoke
    pruned = [
        t for t in study.trials if t.state == TrialState.PRUNED and TrialRecord.of(t).steps < 60
    ]
    assert pruned, "the smoke study (sampler seed 0) prunes a trial before its last step"
    t = pruned[0]
    for _ in range(2):  # bit-reproducible within one process too
        rep = replay_trial(study, t.number)
        assert rep.matches, "\n".join(rep.lines())
        rows = {r.what: r for r in rep.rows}
        assert rows["steps"].replayed == TrialRecord.of(t).steps
        assert [r.what for r in rep.rows if "@ step" in r.what] == [
            f"val/loss @ step {s}" for s in sorted(t.intermediate_values)
        ]
        assert "trial value" not in rows  # a pruned trial has none
    assert "(pruned, stopped at step" in rep.header and "of 60)" in rep.header


def test_a_trial_run_on_other_cpu_kernels_is_compared_within_a_tolerance(smoke):
    """AVX2 and AVX-512 kernels differ in the last bits: no exact comparison across them."""
    _, study = smoke
    best = study.best_trial
    record = TrialRecord.of(best)
    here = torch.backends.cpu.get_cpu_capability()
    other = "AVX2" if here != "AVX2" else "AVX512"
    moved = optuna.create_study(study_name="smoke", direction="minimize")
    moved.add_trial(
        optuna.trial.create_trial(
            params=best.params,
            distributions=best.distributions,
            value=best.value,
            intermediate_values=best.intermediate_values,
            user_attrs={
                **best.user_attrs,
                ATTR: {
                    **best.user_attrs[ATTR],
                    "manifest": {**record.manifest, "cpu_capability": other},
                },
            },
        )
    )
    rep = replay_trial(moved, 0)
    assert rep.tolerance == GPU_TOLERANCE and rep.matches, "\n".join(rep.lines())
    assert rep.environment == [f"CPU kernels differs: {other} (trial) vs {here} (now)"]


def test_unknown_trial_is_one_line_and_exit_2(smoke):
    root, _ = smoke
    out = run_hpo(root, "--study", "smoke", "--replay", "99", check=False)
    assert out.returncode == 2
    assert out.stderr == "error: no trial 99 in study 'smoke' (it has trials 0-3)\n"


def test_study_and_trial_manifests_are_stored_for_replay(smoke):
    root, study = smoke
    m = study.user_attrs["hpo.manifest"]
    assert m["sampler"] == "tpe" and m["seeds"] == {"sampler": 0}
    assert set(m["git"]) == {"commit", "dirty", "diff_sha256"} and m["spec"]["name"] == "smoke"
    assert m["sets"] == {} and m["pruner"] == "sha"
    best = study.best_trial
    tm = TrialRecord.of(best).manifest
    # every seed of the run: the GPT's per component, and the one hpo seeds the rest with
    assert set(tm["seeds"]) == {"init", "data", "dropout", "global"} and tm["tokenizer"] == "char"
    assert tm["torch"] and tm["threads"] >= 1 and tm["steps"] == TrialRecord.of(best).steps
    beside = root / "runs" / "smoke" / "checkpoints" / f"trial_{best.number}" / "manifest.json"
    assert json.loads(beside.read_text()) == tm


def test_a_changed_corpus_is_reported_as_a_mismatch(tmp_path, cache_dir):
    corpus = tmp_path / "corpus.txt"
    lines = [
        f"line {i}: the quick brown fox jumps over the lazy dog {i * i % 97}" for i in range(5000)
    ]
    corpus.write_text("\n".join(lines))
    one = ["--study", "smoke", "--trials", "1", "--pruner", "none", *SMOKE_FAST]
    run_hpo(tmp_path, *one, *sets(f"data.corpus={corpus}"))
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/hpo.db")
    before = TrialRecord.of(study.trials[0]).manifest["data"]["fingerprint"]
    changed = "\n".join(reversed(lines))  # the same characters, another text
    corpus.write_text(changed)
    after = hashlib.sha256(changed.encode()).hexdigest()[:16]

    out = run_hpo(tmp_path, "--study", "smoke", "--replay", "0", check=False)
    assert out.returncode == 1, out.stderr
    assert "MISMATCH:" in out.stdout
    assert f"corpus fingerprint differs: {before} (trial) vs {after} (now)" in out.stdout
    assert "<- differs" in out.stdout  # the differing values are listed


def test_a_trial_without_a_manifest_cannot_be_replayed():
    study = optuna.create_study()
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "diverged"})
    )
    with pytest.raises(
        UsageError, match=r"trial 0 of .* stored no manifest to replay from \(diverged\)"
    ):
        replay_trial(study, 0)


def test_environment_differences_name_what_changed():
    stored = {"data": {"fingerprint": "aaaa"}, "git": {"commit": "c1"}, "packages": {"numpy": "1"}}
    now = {"data": {"fingerprint": "bbbb"}, "git": {"commit": "c1"}, "packages": {"numpy": "2"}}
    assert environment_differences(stored, now) == [
        "corpus fingerprint differs: aaaa (trial) vs bbbb (now)",
        "package numpy differs: 1 (trial) vs 2 (now)",
    ]
