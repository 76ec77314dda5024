"""Manifests: what produced a number, from the code's state to the seeds of each component."""

import hashlib
import json
import subprocess

import torch

from hpo import gpt, manifest
from hpo.manifest import (
    code_version,
    environment,
    outcome_manifest,
    study_manifest,
    write_manifest,
)
from hpo.seam import Run, execute


def git(repo, *args):
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, check=True).stdout


def test_git_state_dirty_flag_and_diff_hash(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    clean = manifest._git(tmp_path)
    assert clean == {
        "commit": git(tmp_path, "rev-parse", "HEAD").decode().strip(),
        "dirty": False,
        "diff_sha256": None,
    }
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = manifest._git(tmp_path)
    assert dirty["dirty"] and dirty["commit"] == clean["commit"]
    assert dirty["diff_sha256"] == hashlib.sha256(git(tmp_path, "diff", "HEAD")).hexdigest()
    (tmp_path / "a.py").write_text("x = 3\n")
    assert manifest._git(tmp_path)["diff_sha256"] != dirty["diff_sha256"]  # another edit


def test_not_a_git_checkout(tmp_path):
    assert manifest._git(tmp_path) == {"commit": None, "dirty": None}


def test_the_training_codes_version_is_its_repository_or_its_file(tmp_path, monkeypatch):
    """The user's code: the commit and changes of the repository its module lives in, or the
    sha256 of its source file when it is in none."""
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "mytrain.py").write_text("def train(config, run):\n    pass\n")
    monkeypatch.syspath_prepend(str(loose))
    import mytrain  # noqa: F401 (code_version reads the imported module's file)

    version = code_version("mytrain:train")
    source = (loose / "mytrain.py").read_bytes()
    assert version == {
        "file": str(loose / "mytrain.py"),
        "sha256": hashlib.sha256(source).hexdigest(),
    }
    ours = code_version("hpo.gpt:train")  # the built-in trainer: hpo's own repository
    assert ours["file"] == "hpo/gpt.py" and ours["commit"] == environment()["git"]["commit"]


def test_trial_manifest_says_what_produced_the_number(tiny_cfg, tmp_path):
    config = {**tiny_cfg.flat(), "train.max_steps": 20}
    run = Run(config, metric="val/loss", minimize=True, checkpoint_dir=tmp_path / "ckpt")
    outcome = execute(gpt.train, run)
    m = outcome_manifest(config, outcome, entry="hpo.gpt:train")
    assert m["torch"] == torch.__version__ and m["cuda"] == torch.version.cuda
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["packages"]["optuna"] and "wandb" in m["packages"]
    assert m["seeds"]["init"] == 1337 and {"data", "dropout"} <= m["seeds"].keys()
    assert m["entry"] == "hpo.gpt:train" and m["code"]["file"] == "hpo/gpt.py"
    assert m["tokenizer"] == "char" and len(m["data"]["fingerprint"]) == 16
    assert m["device"] == "cpu" and m["device_name"] and m["threads"] == torch.get_num_threads()
    assert m["steps"] == 20 and m["stop_reason"] == "max_steps"
    assert m["config"] == config
    path = write_manifest(tmp_path / "trial_0", m)
    assert path.name == "manifest.json" and json.loads(path.read_text()) == m
    assert not list(path.parent.glob("*.tmp"))


def test_study_manifest():
    m = study_manifest(spec={"name": "s"}, sets={"a": "1"}, sampler="tpe", pruner="sha", seed=7)
    assert m["seeds"] == {"sampler": 7} and m["spec"] == {"name": "s"} and m["sets"] == {"a": "1"}
    assert m["git"] == environment()["git"] and m["python"]
