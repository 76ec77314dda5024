"""optuna-dashboard on hpo's storage, driven in a real headless Chromium (Debian's package)."""

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.record import TrialRecord
from tests.helpers import (
    SMOKE_FAST,
    free_port,
    http_get,
    run,
    run_hpo,
    sqlite_url,
    wait_for,
    watch_with_dashboard,
)

pytestmark = pytest.mark.slow  # a browser and real studies

CHROMIUM = "/usr/bin/chromium"
STUDIES = Path(__file__).resolve().parents[2] / "studies"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"  # kept after the run


def serve(cmd, env, port):
    """A dashboard server, once it answers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if not wait_for_http(f"http://127.0.0.1:{port}/api/studies"):
        proc.kill()
    return proc


def wait_for_http(url, timeout=60):
    return wait_for(lambda: http_get(url), timeout=timeout, what=url)


def test_dashboard_in_a_browser_shows_the_study_its_analysis_and_plots(tmp_path, env):
    from playwright.sync_api import sync_playwright

    storage = sqlite_url(tmp_path)
    # one optimizer family and no decay switch: all 8 trials share one condition, enough for
    # importance (hpo.analysis.importance scores a parameter within trials that all have it)
    spec = yaml.safe_load((STUDIES / "smoke.yaml").read_text())
    spec["search_space"]["optimizer"] = {
        "lr": [1.0e-3, 3.0e-2],
        "names": ["adamw"],
        "weight_decay": None,
    }
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(spec))
    run_hpo(tmp_path, "--study", str(tmp_path / "smoke.yaml"), "--trials", "8", "--pruner", "none")
    run("hpo.analyze", "--study", "smoke", "--storage", storage, "--resamples", "3", env=env)
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
    storage = sqlite_url(tmp_path)
    run_hpo(tmp_path, "--study", "smoke", "--trials", "3", env=env)
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
    storage = sqlite_url(tmp_path)
    run_hpo(tmp_path, "--study", "smoke", "--trials", "1", env=env)  # the study exists
    dashboard = watch_with_dashboard(storage, env)  # what an open browser tab does, but faster
    try:
        args = ["--study", "smoke", "--trials", "12", "--workers", "4", *SMOKE_FAST]
        out = run_hpo(tmp_path, *args, env=env)
    finally:
        polls = dashboard()
    assert "database is locked" not in out.stderr
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 12
    assert not [
        t
        for t in trials
        if t.state == TrialState.FAIL and TrialRecord.of(t).stop_reason != "surplus"
    ]
    assert polls > 5
