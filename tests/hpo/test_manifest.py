"""Manifests: what produced a number, from the code's state to the seeds of each component."""

import hashlib
import json
import subprocess

import torch

from hpo import manifest
from hpo.manifest import environment, result_manifest, study_manifest, write_manifest
from trainers import train


def git(repo, *args):
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, check=True).stdout


def test_git_state_dirty_flag_and_diff_hash(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    monkeypatch.setattr(manifest, "REPO", tmp_path)
    clean = manifest._git()
    assert clean == {
        "commit": git(tmp_path, "rev-parse", "HEAD").decode().strip(),
        "dirty": False,
        "diff_sha256": None,
    }
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = manifest._git()
    assert dirty["dirty"] and dirty["commit"] == clean["commit"]
    assert dirty["diff_sha256"] == hashlib.sha256(git(tmp_path, "diff", "HEAD")).hexdigest()
    (tmp_path / "a.py").write_text("x = 3\n")
    assert manifest._git()["diff_sha256"] != dirty["diff_sha256"]  # another edit, another hash


def test_not_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "REPO", tmp_path)
    assert manifest._git() == {"commit": None, "dirty": None}


def test_trial_manifest_says_what_produced_the_number(tiny_cfg, tmp_path):
    result = train(tiny_cfg.with_overrides({"train.max_steps": 20}))
    m = result_manifest(tiny_cfg, result)
    assert m["torch"] == torch.__version__ and m["cuda"] == torch.version.cuda
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["packages"]["optuna"] and "wandb" in m["packages"]
    assert m["seeds"] == {
        "init": 1337,
        "data": result.seeds["data"],
        "dropout": result.seeds["dropout"],
    }
    assert m["tokenizer"] == "char" and len(m["data"]["fingerprint"]) == 16
    assert m["device"] == "cpu" and m["device_name"] and m["threads"] == torch.get_num_threads()
    assert m["steps"] == 20 and m["stop_reason"] == "max_steps"
    assert m["config"] == tiny_cfg.to_dict()
    path = write_manifest(tmp_path / "trial_0", m)
    assert path.name == "manifest.json" and json.loads(path.read_text()) == m
    assert not list(path.parent.glob("*.tmp"))


def test_study_manifest():
    m = study_manifest(spec={"name": "s"}, sets={"a": "1"}, sampler="tpe", pruner="sha", seed=7)
    assert m["seeds"] == {"sampler": 7} and m["spec"] == {"name": "s"} and m["sets"] == {"a": "1"}
    assert m["git"] == environment()["git"] and m["python"]
