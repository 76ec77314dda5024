"""Any training script under hpo, in any language: the study names its command line.

    trainer:
      entry: hpo.integrations.script:train
      script.command: >-
        {python} train.py --lr {optim.lr} --batch {train.batch_size}
        --out {checkpoint_dir} --seed {seed}
      script.grace_s: 10          # after SIGTERM (pruned), the seconds before SIGKILL
      optim.lr: 1.0e-3            # every setting the command names, with its fixed value
      train.batch_size: 32
      train.max_steps: 500        # what the pruners count in
      train.eval_interval: 50

Placeholders: `{<config key>}` (the trial's value), `{checkpoint_dir}` (the trial's own folder),
`{seed}` (the run's seed: changed by hpo.validate seed by seed), `{trial}`, `{python}` (the
interpreter hpo runs in). The command is split
like a shell line but run without a shell, so a value is one argument, never code. The script
also finds them in its environment: HPO_CONFIG (the whole config as JSON), HPO_CHECKPOINT_DIR,
HPO_SEED, HPO_TRIAL, and HPO_SCORE_TEST=1 when hpo.validate wants the test split scored.

The script talks to hpo by printing lines (anything else it prints is kept, not read):

    hpo.report step=100 val/loss=0.52 val/accuracy=0.81   # one evaluation
    hpo.save step=100                                     # a complete checkpoint of step 100
    hpo.test test/loss=0.55 test/accuracy=0.80            # the test split (HPO_SCORE_TEST=1)

A pruned trial's script gets SIGTERM, then SIGKILL after `script.grace_s`. A trial retried
after its worker died runs the same command with the same checkpoint folder: the script resumes
from what it saved there, and hpo keeps the reports up to its last `hpo.save`. A script that
exits with a non-zero code is a failed trial, the last lines of its stderr the reason. Its
stdout and stderr are kept per trial (stdout.log, stderr.log in the run's log folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from hpo.errors import UsageError
from hpo.seam import ContractError, Run
from hpo.trainable import Trainable

COMMAND, GRACE, CWD = "script.command", "script.grace_s", "script.cwd"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")
REPORTS = "hpo_reports.jsonl"  # in the checkpoint folder: what a retry's history comes from
LINE = re.compile(r"^hpo\.(report|save|test)(?:\s+(.*))?$")


class ScriptFailed(Exception):
    """The script exited with a non-zero code: the trial fails, the study goes on."""


class ScriptTrainable(Trainable):
    """The study's `script.command`, run as each trial (see the module's docstring)."""

    def __call__(self, config: dict[str, Any], run: Run) -> None:
        _run_script(config, run)

    def preflight(
        self, config: dict[str, Any], *, splits: tuple[str, ...], device: bool = True
    ) -> None:
        """The command parses, names only config keys, and its program is there: refused
        before the study is created, not at its first trial."""
        try:
            args = command_line(_command(config), config, run=None, seed=0)
        except ContractError as e:
            raise UsageError(str(e)) from None
        cwd = config.get(CWD) or os.getcwd()
        # a name is looked up on PATH; a path (it has a folder in it) is taken from cwd
        program = args[0] if os.sep not in args[0] else str(Path(cwd, args[0]))
        if shutil.which(program) is None:
            raise UsageError(
                f"{COMMAND}: cannot run {args[0]!r}: no such program (on PATH, or from {cwd})"
            )


train = ScriptTrainable()  # trainer.entry: hpo.integrations.script:train


def _command(config: dict[str, Any]) -> str:
    command = config.get(COMMAND)
    if not isinstance(command, str) or not command.strip():
        raise ContractError(
            f"the script trainer needs {COMMAND}: the command line to run, with placeholders "
            "such as {optim.lr} and {checkpoint_dir}"
        )
    return command


def _run_script(config: dict[str, Any], run: Run) -> None:
    grace = float(config.get(GRACE, 10))
    run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    seed = run.seed("init")
    args = command_line(_command(config), config, run, seed)
    run.note(framework={"argv": args})  # exactly what the script was given
    env = {
        **os.environ,
        "HPO_CONFIG": json.dumps(dict(config.items())),
        "HPO_CHECKPOINT_DIR": str(run.checkpoint_dir),
        "HPO_SEED": str(seed),
        "HPO_TRIAL": "" if run.trial is None else str(run.trial),
        "HPO_SCORE_TEST": "1" if run.scores_test else "0",
        "PYTHONUNBUFFERED": "1",  # a Python script's reports arrive as it prints them
    }
    journal = Journal(run.checkpoint_dir / REPORTS)
    run.log_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(run.log_dir / "stdout.log", "a") as out_log,
        open(run.log_dir / "stderr.log", "a+") as err_log,
    ):
        started = err_log.tell()  # this run's stderr begins here (a retry's log goes on)
        try:
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=err_log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=config.get(CWD) or None,
                start_new_session=True,  # its children too are stopped with it
                preexec_fn=_die_with_parent,
            )
        except OSError as e:  # not found, not executable: every trial would fail the same
            raise ContractError(f"{COMMAND}: cannot run {args[0]!r}: {e.strerror}") from None
        try:
            for line in proc.stdout:
                out_log.write(line)
                out_log.flush()
                _read(line, run, journal)
        except BaseException:  # pruned (StopTrial), diverged, a broken contract, Ctrl-C
            stop(proc, grace)
            raise
        finally:
            proc.stdout.close()
            if journal.resumed_from:  # the reports before the save a retry resumed from
                run.restored(journal.resumed_from, journal.earlier)
        code = proc.wait()
        if code != 0:
            err_log.seek(started)
            tail = [line.strip() for line in deque(err_log, maxlen=3) if line.strip()]
            raise ScriptFailed(
                f"the script exited with code {code}: {' | '.join(tail) or '(no stderr)'}"
                f" (its output: {run.log_dir})"
            )


def command_line(command: str, config: dict[str, Any], run: Run | None, seed: int) -> list[str]:
    """The command's arguments with every placeholder replaced by its value (run None: a
    check of the command before any run)."""
    folder = run.checkpoint_dir if run is not None else Path("checkpoint_dir")
    known = {"checkpoint_dir": str(folder), "seed": str(seed), "python": sys.executable}
    known["trial"] = "" if run is None or run.trial is None else str(run.trial)

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key in known:
            return known[key]
        if key not in config:
            raise ContractError(
                f"{COMMAND} names {{{key}}}, which is not a config key: set {key} in the "
                "study's trainer settings, or use {checkpoint_dir}, {seed}, {trial} or {python}"
            )
        return str(config[key])

    try:
        parts = shlex.split(command)
    except ValueError as e:
        raise ContractError(f"{COMMAND} does not parse as a command line: {e}") from None
    return [PLACEHOLDER.sub(value, part) for part in parts]


class Journal:
    """The reports and saves of a trial's script, kept in its checkpoint folder: a retry reads
    the reports up to the last save it resumes from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):  # a line a kill cut short
                rows.append(json.loads(line))
        saves = [row["step"] for row in rows if row["kind"] == "save"]
        self.resumed_from = saves[-1] if saves else 0
        # the reports up to that save, the last of each step (an earlier retry may have
        # reported a step again after it): what this run continues
        earlier = {
            row["step"]: row["report"]
            for row in rows
            if row["kind"] == "report" and row["step"] <= self.resumed_from
        }
        self.earlier = [earlier[step] for step in sorted(earlier)]
        # the journal starts again from there: what came after the save is undone by the retry
        with open(path, "w") as f:
            for report in self.earlier:
                f.write(json.dumps({"kind": "report", "step": report["step"], "report": report}))
                f.write("\n")
            if self.resumed_from:
                f.write(json.dumps({"kind": "save", "step": self.resumed_from, "report": None}))
                f.write("\n")

    def write(self, kind: str, step: int, report: dict[str, float] | None = None) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "report": report}) + "\n")


def _read(line: str, run: Run, journal: Journal) -> None:
    match = LINE.match(line.strip())
    if match is None:
        return
    kind, fields = match.groups()
    values = _fields(fields or "", line)
    if kind == "test":
        run.report_test(values)
        return
    step = values.pop("step", None)
    if step is None or not float(step).is_integer():
        raise ContractError(f"the script printed {line.strip()!r}: it needs step=<whole number>")
    step = int(step)
    if kind == "save":
        run.save(step)  # the script's own checkpoint: what Ray or PBT hands on
        journal.write("save", step)
        return
    journal.write("report", step, {"step": step, **values})
    run.report(step, values)


def _fields(text: str, line: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for pair in text.split():
        name, sep, value = pair.partition("=")
        try:
            values[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ContractError(
                f"the script printed {line.strip()!r}: write name=number pairs, e.g. "
                "hpo.report step=100 val/loss=0.52"
            ) from None
    return values


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the script's process group; SIGKILL if it has not ended after `grace` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# loaded here, not in the child: a child of a threaded process must not load libraries
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the worker that started it dies (kill -9 included), so that
    no orphaned script goes on writing into a folder its retry resumes from (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
