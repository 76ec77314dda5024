"""The documentation runs as written. The README's Python example of `hpo.tune` and
`hpo.validate_winner` runs (with a smaller budget) and does what the README says (slow); every
`python -m` command in the README, BENCHMARKS.md and docs/ names a module whose `--help` exits 0
and lists each flag the command uses, every benchmark script they name exists, and every
relative link of those pages and of benchmarks/results/ reaches its file and heading (fast)."""

import re
import runpy
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO

SMALLER = {
    "trials=30": "trials=4",
    '"train.max_steps": 400': '"train.max_steps": 80',
    '"train.eval_interval": 40': '"train.eval_interval": 20',
}


@pytest.mark.slow  # real training of the digits example
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


# --- every command in the docs still runs as written (fast) ---------------------------------

# the pages a user reads for commands; benchmarks/results/ is a dated record of the commands
# as they were run then, so only its links are checked
PAGES = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", *(REPO / "docs").glob("*.md")])
LINKED = sorted([*PAGES, *(REPO / "benchmarks" / "results").glob("*.md")])
# modules the docs run that are not this project's: their flags are theirs to keep
NOT_OURS = {"pip", "pytest"}

FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|[\s(])(?:\S*/)?python3?\s+-m\s+([A-Za-z_][\w.]*)([^\n]*)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SCRIPT = re.compile(r"\bbenchmarks/[\w/]+\.py\b")


def code_lines(text: str) -> list[str]:
    """Each line of every fenced block (continuation lines joined, comments dropped), and each
    inline code span outside them."""
    lines = []
    for block in FENCE.findall(text):
        body = block.split("\n", 1)[1].rsplit("```", 1)[0]
        for line in body.replace("\\\n", " ").splitlines():
            lines.append(re.sub(r"\s#.*", "", line))
    lines += INLINE.findall(FENCE.sub("", text))
    return lines


def commands() -> list[tuple[str, str, str]]:
    """(page, module, the command's own text) for every `python -m` command in PAGES."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text()):
            for part in re.split(r"&&|\|\||;|\|", line):
                for module, rest in COMMAND.findall(part):
                    found.append((page.relative_to(REPO).as_posix(), module, rest))
    return found


COMMANDS = commands()
OURS = sorted({m for _, m, _ in COMMANDS} - NOT_OURS)


def test_the_docs_name_commands_and_only_known_foreign_modules():
    assert {"hpo.run", "hpo.worker", "hpo.dashboard", "hpo.analyze", "hpo.validate"} <= set(OURS)
    foreign = [m for m in OURS if not (REPO / m.split(".")[0]).is_dir()]
    assert not foreign, f"not this project's modules: add them to NOT_OURS, {foreign=}"


@pytest.mark.parametrize("module", OURS)
def test_each_module_the_docs_run_answers_help_with_every_flag_they_use(
    module, monkeypatch, capsys
):
    """One `--help` per module, run as `python -m` runs it (in this process: the imports are
    shared, the entry point is the same): it exits 0, and each flag a command of the docs gives
    it is there (a renamed or removed flag fails here, not in a user's terminal)."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as done, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": it is
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    out = capsys.readouterr().out
    assert done.value.code == 0, f"python -m {module} --help exited {done.value.code}"
    assert "usage:" in out
    known = set(FLAG.findall(out))
    unknown = [
        (page, flag, f"python -m {module}{rest}")
        for page, m, rest in COMMANDS
        if m == module
        for flag in FLAG.findall(rest)
        if flag not in known
    ]
    assert not unknown, unknown


def test_each_benchmark_script_the_docs_name_exists():
    named = {(p.name, s) for p in PAGES for s in SCRIPT.findall(p.read_text())}
    assert named, "the docs name no benchmark script"
    missing = sorted((page, s) for page, s in named if not (REPO / s).is_file())
    assert not missing, missing


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> Iterator[str]:
    """The anchor of each heading of a Markdown page (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            yield base if n == 0 else f"{base}-{n}"


@pytest.mark.parametrize("page", LINKED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_each_relative_link_reaches_its_file_and_heading(page):
    text = INLINE.sub("", FENCE.sub("", page.read_text()))
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]: (\S+)", text, re.M)
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        missing = not file.exists()
        if missing or (anchor and file.suffix == ".md" and anchor not in set(anchors(file))):
            broken.append(target)
    defined = {d.lower() for d in re.findall(r"^\[([^\]]+)\]: ", text, re.M)}
    broken += [
        f"[{r}] undefined" for r in re.findall(r"\]\[([^\]]+)\]", text) if r.lower() not in defined
    ]
    assert not broken, broken
