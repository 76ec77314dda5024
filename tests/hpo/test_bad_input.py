"""Bad input is found before anything is stored: one line on stderr, exit code 2, and the
storage and the runs folder exactly as they were (issue: bad input found before anything is
stored)."""

import os
import socket
import subprocess
import sys

import optuna
import pytest
import torch

from hpo.storage import storage_url

CUDA_OR_MPS = "mps" if torch.cuda.is_available() else "cuda"  # a device this machine lacks


@pytest.fixture
def world(tmp_path, cache_dir):
    """A storage holding one study and a runs folder holding one file: what must not change."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "keep.txt").write_text("x")
    url = f"sqlite:///{tmp_path}/hpo.db"
    optuna.create_study(study_name="keep", storage=url).enqueue_trial({"x": 1})
    env = {**os.environ, "HPO_RUNS_DIR": str(runs), "HPO_STORAGE": url}
    return tmp_path, url, env


def snapshot(tmp_path, url):
    studies = optuna.get_all_study_summaries(url)
    files = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "hpo.db" not in p.name
    )
    return [(s.study_name, s.n_trials) for s in studies], files


def refused(world, module, *args):
    """Run `module` with `args`; return its one stderr line after checking nothing changed."""
    tmp_path, url, env = world
    before = snapshot(tmp_path, url)
    out = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert snapshot(tmp_path, url) == before
    return out.stderr.strip()


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "data.corpus=/no/such.txt"], "error: corpus '/no/such.txt' not found"),
        (["--set", "model.block_size=100000"], "error: the val split of corpus 'stdlib' has"),
        (["--device", CUDA_OR_MPS], f"error: train.device={CUDA_OR_MPS} but"),
        (["--set", "optim.lr=50"], "error: --set optim.lr is set by the search space 'optimizer'"),
        (["--set", "optim.name=sgd"], "error: --set optim.name is set by the search space"),
        (["--set", "optim.eps=inf"], "error: --set: optim.eps must be a finite number"),
        (
            ["--set", "schedule.min_lr_frac=nan"],
            "error: --set: schedule.min_lr_frac must be a finite",
        ),
        (["--seed", "-1"], "error: --seed must be in [0, 2**32), but got -1"),
        (["--timeout", "nan"], "error: --timeout must be a positive number of seconds"),
        (["--timeout", "inf"], "error: --timeout must be a positive number of seconds"),
    ],
)
def test_run_refuses_before_creating_the_study(world, args, message):
    assert refused(world, "hpo.run", "--study", "smoke", *args).startswith(message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("too short for a context of 32 tokens\n", "fewer than the context of 32 + 1"),
        (bytes(range(256)) * 400, "is not text"),
    ],
    # short names: pytest puts a test's id in the environment of every command it starts, and
    # 100 kB of bytes there is more than exec accepts
    ids=["empty", "short", "binary"],
)
def test_run_refuses_a_corpus_it_cannot_train_on(world, content, message):
    corpus = write(world[0], "corpus.txt", content)
    line = refused(world, "hpo.run", "--study", "smoke", "--set", f"data.corpus={corpus}")
    assert line.startswith("error:") and message in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("search_space: {optimizer: {}}\n", "missing required key 'description'"),
        (
            "description: caf\xe9\nsearch_space: {optimizer: {}}\n".encode("latin-1"),
            "not UTF-8 text",
        ),
        (
            "description: x\nsearch_space: {optimizer: {}}\ntrials: " + "9" * 200 + "x\n",
            "but got '999",
        ),
    ],
)
def test_run_refuses_a_bad_study_file_in_one_line(world, content, message):
    study = write(world[0], "bad.yaml", content)
    line = refused(world, "hpo.run", "--study", study)
    assert message in line and len(line) < 400


@pytest.mark.parametrize("module", ["hpo.analyze", "hpo.validate"])
def test_a_mistyped_sqlite_path_is_refused_and_not_left_behind(world, module):
    missing = world[0] / "hpo-typo.db"
    line = refused(world, module, "--study", "keep", "--storage", f"sqlite:///{missing}")
    assert line.startswith(f"error: no SQLite database at '{missing}'")
    assert not missing.exists()


def test_dashboard_on_a_port_in_use_is_one_line(world):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused(world, "hpo.dashboard", "--port", str(port))
    assert (
        line
        == f"error: cannot listen on 127.0.0.1:{port} (Address already in use): pick another --port"
    )


def test_a_sqlite_url_in_a_folder_that_does_not_exist_is_refused(world):
    """A mistyped folder in --storage is an error, not a new database nobody will look for."""
    missing = world[0] / "no-such-folder" / "hpo.db"
    line = refused(world, "hpo.run", "--study", "smoke", "--storage", f"sqlite:///{missing}")
    assert line.startswith(f"error: no folder '{missing.parent}' for the SQLite database")
    assert not missing.parent.exists()


def test_an_empty_storage_is_refused_not_read_as_the_default(world):
    line = refused(world, "hpo.run", "--study", "smoke", "--storage", "")
    assert line.startswith("error: --storage is empty: give a database URL")


def test_the_default_database_is_in_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert storage_url() == f"sqlite:///{tmp_path / 'elsewhere' / 'hpo.db'}"
