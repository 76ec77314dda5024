"""The README's Python example of `hpo.tune` and `hpo.validate_winner` runs as written (with a
smaller budget) and does what the README says."""

import re

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # real training of the digits example

SMALLER = {
    "trials=30": "trials=4",
    '"train.max_steps": 400': '"train.max_steps": 80',
    '"train.eval_interval": 40': '"train.eval_interval": 20',
}


def test_the_readmes_tune_your_own_model_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    (example,) = [b for b in blocks if "hpo.tune(" in b]
    code = example
    for written, smaller in SMALLER.items():
        assert written in code
        code = code.replace(written, smaller)
    monkeypatch.chdir(tmp_path)  # its default storage: sqlite:///runs/hpo.db, here
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    study, report = namespace["study"], namespace["report"]
    assert study.study_name == "digits" and len(study.get_trials()) == 4
    assert (tmp_path / "runs" / "hpo.db").exists()
    assert report["metric"] == "test/accuracy" and report["seeds"] >= 6
    (comparison,) = report["comparisons"].values()
    assert comparison["verdict"]
