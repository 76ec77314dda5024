"""trainers/ must know nothing of tuning: the same trainer serves Optuna, Ray and plain runs."""

import ast
import subprocess
import sys
from pathlib import Path

import trainers

FORBIDDEN = {"optuna", "ray", "wandb", "mlflow", "hpo", "search_spaces"}


def test_no_trainer_module_imports_a_tuner():
    for path in Path(trainers.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_and_running_the_cli_loads_no_tuner():
    code = (
        "import sys, trainers, trainers.train, trainers.loop;"
        f"bad = {sorted(FORBIDDEN)!r};"
        "print([m for m in bad if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
