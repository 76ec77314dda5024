# One command each: `make run` sets up and tunes lr_sweep on the built-in corpus; `make test`
# sets up (the venv, and Debian's chromium for the browser tests) and runs lint and the test
# suite (what CI runs).
PY := .venv/bin/python

.PHONY: setup run test bench

setup:
	bash scripts/setup.sh

run: setup
	$(PY) -m hpo.run --study lr_sweep

test: setup
	bash scripts/install-browser.sh
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/trainer_throughput.py
