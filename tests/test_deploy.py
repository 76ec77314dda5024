"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the file's structure,
every file it needs, and each service's own command run here against the local PostgreSQL."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from optuna.trial import TrialState

from hpo.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's own substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ is a literal $."""

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    value = re.sub(r"(?<!\$)\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)
    return value.replace("$$", "$")


def test_services_and_their_files():
    assert {"postgres", "dashboard", "tuner", "worker", "worker-gpu"} <= set(SERVICES)
    pg = SERVICES["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["env_file"] == ".env"
    for name in ("dashboard", "tuner", "worker", "worker-gpu"):
        s = SERVICES[name]
        assert s["build"] == "." and s["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "runs:/runs" in s["volumes"] and s["environment"]["HPO_RUNS_DIR"] == "/runs"
    for name in ("worker", "worker-gpu"):  # scalable: no fixed name, no host port
        assert "container_name" not in SERVICES[name] and "ports" not in SERVICES[name]
    gpu = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and SERVICES["worker-gpu"]["profiles"] == ["gpu"]
    # every file the image is built from exists, and the command it runs by default works
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_the_dashboard_is_published_on_this_machine_only_unless_asked():
    (published,) = SERVICES["dashboard"]["ports"]
    assert interpolate(published, {}) == "127.0.0.1:8080:8080"  # no login: not on every interface
    assert interpolate(published, env_example()) == "127.0.0.1:8080:8080"
    assert interpolate(published, {"HPO_DASHBOARD_BIND": "0.0.0.0"}) == "0.0.0.0:8080:8080"


def test_credentials_come_from_the_env_file_only():
    text = (REPO / "docker-compose.yml").read_text()
    example = env_example()
    assert example["POSTGRES_PASSWORD"] not in text
    for service in SERVICES.values():  # no service sets it itself
        assert "POSTGRES_PASSWORD" not in (service.get("environment") or {})
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):  # no .env: compose refuses to start
        interpolate(SERVICES["worker"]["environment"]["HPO_STORAGE"], {"POSTGRES_USER": "u"})


@pytest.fixture
def local_env(tmp_path, cache_dir):
    """The compose environment, pointed at this machine's PostgreSQL in a database of its own."""
    db = f"hpo_compose_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
        values = {**env_example(), "POSTGRES_USER": "postgres", "POSTGRES_DB": db}
        values.update(HPO_STUDY="smoke", HPO_TRIALS="3")
        yield values
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def service_command(name: str, values: dict[str, str], tmp_path) -> tuple[list[str], dict]:
    s = SERVICES[name]
    env = {k: interpolate(str(v), values) for k, v in s["environment"].items()}
    # the service's host name "postgres" is this machine; trust auth needs no password
    env["HPO_STORAGE"] = env["HPO_STORAGE"].replace(
        f":{values['POSTGRES_PASSWORD']}@postgres:", "@127.0.0.1:"
    )
    env["HPO_RUNS_DIR"] = str(tmp_path / "runs")  # the shared volume
    cmd = [interpolate(part, values) for part in s["command"]]
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]], {**os.environ, **values, **env}


@pytest.mark.slow  # PostgreSQL and a real study
def test_each_service_command_runs_against_local_postgres(local_env, tmp_path):
    # postgres: its health check
    check = interpolate(SERVICES["postgres"]["healthcheck"]["test"][1], {})
    check = check.replace("${POSTGRES_USER}", "postgres").replace(
        "${POSTGRES_DB}", local_env["POSTGRES_DB"]
    )
    assert (
        subprocess.run([*shlex.split(check), "-h", "127.0.0.1"], capture_output=True).returncode
        == 0
    )

    # worker started before the tuner: it waits for the study, then joins it
    cmd, env = service_command("worker", local_env, tmp_path)
    worker = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    cmd, env = service_command("tuner", local_env, tmp_path)
    tuner = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert tuner.returncode == 0, tuner.stderr[-3000:]
    _, err = worker.communicate(timeout=400)
    assert worker.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="smoke", storage=open_storage(env["HPO_STORAGE"]))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 3

    cmd, env = service_command("dashboard", local_env, tmp_path)
    port = SERVICES["dashboard"]["ports"][0].split(":")[-1]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        body = None
        for _ in range(150):
            try:
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=5
                ).read()
                break
            except OSError:
                time.sleep(0.4)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    assert body is not None and b'"smoke"' in body
