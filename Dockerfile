# The hpo image: tuner, worker and dashboard (docker-compose.yml says which runs).
#   docker build -t hpo .                                         # CPU build of PyTorch
#   docker build -t hpo --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HPO_RUNS_DIR=/runs

WORKDIR /app
# PyTorch first, from the index that matches the hardware, so the project's loose "torch>=2.4"
# is already satisfied and pip does not pull a second, multi-GB build.
RUN pip install "torch>=2.4" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY trainers ./trainers
COPY search_spaces ./search_spaces
COPY studies ./studies
RUN pip install .

VOLUME /runs
CMD ["python", "-m", "hpo.worker", "--help"]
