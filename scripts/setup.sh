#!/usr/bin/env bash
# One-step setup: a virtual environment in .venv with the project and its dev tools.
# PyTorch comes first so that the right build is chosen: a CUDA build where an NVIDIA GPU is
# visible, otherwise the CPU build (pinned, so pip takes the CPU wheel where one is provided
# locally instead of pulling a multi-GB CUDA build onto a machine that cannot use it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing a CUDA build of PyTorch"
    pip install "torch>=2.4"
  else
    echo "setup: no GPU found, installing the CPU build of PyTorch ${TORCH_CPU_VERSION}"
    pip install "torch==${TORCH_CPU_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
fi
pip install -e ".[dev,finetune,lightning]"  # the adapters' tests need their frameworks
echo "setup: ready (.venv/bin/python -c 'import torch; print(torch.__version__)' -> $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
