"""optuna-dashboard on hpo's storage, driven in a real headless Chromium (Debian's package)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"  # kept after the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@pytest.fixture
def env(tmp_path, cache_dir):
    return {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}


def hpo(module, *args, env, check=True):
    out = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_smoke(storage, env, *args):
    """The smoke study into `storage`, through the real CLI."""
    return hpo("hpo.run", "--study", "smoke", "--storage", storage, "--no-progress", *args, env=env)


def serve(cmd, env, port):
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/studies")
    except TimeoutError:
        proc.kill()
        raise
    return proc


def test_dashboard_in_a_browser_shows_the_study_its_analysis_and_plots(tmp_path, env):
    from playwright.sync_api import sync_playwright

    storage = f"sqlite:///{tmp_path}/hpo.db"
    run_smoke(storage, env, "--trials", "8", "--pruner", "none")
    hpo("hpo.analyze", "--study", "smoke", "--storage", storage, "--resamples", "3", env=env)
    study = optuna.load_study(study_name="smoke", storage=storage)
    best = study.best_trial
    port = free_port()
    server = serve(
        [sys.executable, "-m", "hpo.dashboard", "--storage", storage, "--port", str(port)],
        env,
        port,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.get_by_text(re.compile(r"^\d+\. smoke$")).first.click()  # the study in the list
            page.get_by_text(f"Best Trial (number={best.number})").wait_for(timeout=30_000)
            assert page.get_by_text(str(best.value)).count() >= 1
            page.get_by_text("importance.png").wait_for(timeout=30_000)  # an uploaded plot
            page.screenshot(path=str(SCREENSHOTS / "dashboard_study.png"), full_page=True)
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials")
            page.get_by_text("8 Trials").wait_for(timeout=30_000)
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/note")
            page.get_by_text("Analysis of smoke").wait_for(timeout=30_000)
            assert page.get_by_text("Importance (90% interval)").count() == 1
            browser.close()
    finally:
        server.kill()
    assert (SCREENSHOTS / "dashboard_study.png").stat().st_size > 10_000


def test_plain_optuna_dashboard_reads_our_storage(tmp_path, env):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    run_smoke(storage, env, "--trials", "3")
    port = free_port()
    cli = Path(sys.executable).parent / "optuna-dashboard"
    server = serve(
        [
            str(cli),
            storage,
            "--port",
            str(port),
            "--artifact-dir",
            str(tmp_path / "runs" / "artifacts"),
        ],
        env,
        port,
    )
    try:
        studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies"))[
            "study_summaries"
        ]
    finally:
        server.kill()
    assert [s["study_name"] for s in studies] == ["smoke"]


def test_watching_a_running_study_does_not_lock_the_workers(tmp_path, env):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    run_smoke(storage, env, "--trials", "1")  # the study exists
    port = free_port()
    server = serve(
        [sys.executable, "-m", "hpo.dashboard", "--storage", storage, "--port", str(port)],
        env,
        port,
    )
    stop, polls = threading.Event(), [0]

    def watch():  # what an open browser tab does, but faster
        while not stop.is_set():
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies/1?after=0", timeout=30
                ).read()
                polls[0] += 1
            except OSError:  # a slow answer on a busy 2-core machine is not what this test is about
                time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = run_smoke(
            storage, env, "--trials", "12", "--workers", "4", "--set", "train.max_steps=30"
        )
    finally:
        stop.set()
        watcher.join()
        server.kill()
    assert "database is locked" not in out.stderr
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 12
    assert not [
        t
        for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get("stop_reason") != "surplus"
    ]
    assert polls[0] > 5
