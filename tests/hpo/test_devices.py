"""Workers on GPU hosts: which GPU each worker gets, packing several trials on one, and the retry
of a trial that ran out of memory with its GPU to itself. On this CPU machine the GPUs are a
list in CUDA_VISIBLE_DEVICES, the variable a GPU host sets (no mock of our code): the workers
and their records follow it, and train on the CPU."""

import threading
import time
from collections import Counter, defaultdict

import pytest
import torch

from hpo.devices import Placement, gpu_share, place_workers, visible_gpus
from hpo.errors import UsageError
from hpo.record import TrialRecord
from tests.helpers import run_hpo, trials_at

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


def test_one_worker_per_listed_gpu_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    n, placement = place_workers(workers=None, trials_per_gpu=None, device="auto")
    assert (n, placement) == (3, Placement(("0", "1", "2"), per_gpu=1))
    n, placement = place_workers(workers=None, trials_per_gpu=2, device="cuda")
    assert n == 6 and [placement.gpu_of(i) for i in range(n)] == ["0", "1", "2"] * 2
    n, placement = place_workers(workers=4, trials_per_gpu=None, device="auto")
    assert [placement.gpu_of(i) for i in range(n)] == ["0", "1", "2", "0"]
    assert placement.per_gpu == 2  # four workers on three GPUs: some share


def test_the_users_own_list_is_respected_as_written(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-5f2c")
    n, placement = place_workers(workers=None, trials_per_gpu=None, device="auto")
    assert placement.gpus == ("3", "GPU-5f2c") and n == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # the usual way to hide every GPU
    assert visible_gpus() == ()
    assert place_workers(workers=None, trials_per_gpu=None, device="auto") == (1, None)


def test_the_cpu_and_impossible_packing_are_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert place_workers(workers=2, trials_per_gpu=None, device="cpu") == (2, None)
    with pytest.raises(UsageError, match=r"train\.device=cpu"):
        place_workers(workers=None, trials_per_gpu=2, device="cpu")
    with pytest.raises(UsageError, match="--workers 5 would put more than --trials-per-gpu 2"):
        place_workers(workers=5, trials_per_gpu=2, device="auto")


@NO_GPU
def test_trials_per_gpu_without_a_gpu_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = run_hpo(tmp_path, "--study", "smoke", "--trials-per-gpu", "2", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: --trials-per-gpu packs trials on GPUs, but no GPU")
    assert not (tmp_path / "hpo.db").exists()


def test_a_trial_alone_on_its_gpu_waits_for_the_others_and_new_ones_wait_for_it(tmp_path):
    events, order = [], threading.Lock()

    def trial(name, alone, hold):
        with gpu_share(f"test-{tmp_path.name}", alone=alone):
            with order:
                events.append(f"{name} in")
            time.sleep(hold)
            with order:
                events.append(f"{name} out")

    first = threading.Thread(target=trial, args=("a", False, 0.6))
    first.start()
    time.sleep(0.1)
    retry = threading.Thread(target=trial, args=("retry", True, 0.3))
    retry.start()
    time.sleep(0.1)
    late = threading.Thread(target=trial, args=("b", False, 0.1))  # arrives after the retry
    late.start()
    for t in (first, retry, late):
        t.join()
    assert events == ["a in", "a out", "retry in", "retry out", "b in", "b out"]


@pytest.mark.slow  # four worker processes train real trials
def test_workers_train_on_their_gpus_and_say_so(tmp_path, env):
    env = {**env, "CUDA_VISIBLE_DEVICES": "0,1"}
    out = run_hpo(tmp_path, "--study", "smoke", "--trials", "6", "--trials-per-gpu", "2", env=env)
    assert "4 worker(s) on GPU(s) 0, 1, 2 trials per GPU" in out.stderr
    by_worker = defaultdict(set)
    for t in trials_at(tmp_path):
        record = TrialRecord.of(t)
        if not record.worker:  # a surplus trial: stopped before it was given to a worker
            continue
        if record.manifest is not None:
            # what the worker process saw is what it recorded
            assert record.manifest["cuda_visible_devices"] == record.gpu
        by_worker[record.worker].add(record.gpu)
    assert all(len(gpus) == 1 for gpus in by_worker.values())  # a worker keeps its GPU
    per_gpu = Counter(next(iter(gpus)) for gpus in by_worker.values())
    assert set(per_gpu) <= {"0", "1"} and max(per_gpu.values()) <= 2


@pytest.mark.slow  # two worker processes
def test_out_of_memory_on_a_shared_gpu_is_retried_once_alone(tmp_path, env):
    # a width no machine has memory for: every trial runs out of memory at once
    spec = tmp_path / "huge.yaml"
    spec.write_text(
        "description: out of memory\n"
        "search_space: {optimizer: {lr: [1.0e-3, 3.0e-3], names: [adamw]}}\n"
        "trainer: {data.max_chars: 200000, model.n_layer: 1, model.n_head: 2,"
        " model.n_embd: 131072, train.max_steps: 20, train.eval_interval: 10}\n"
    )
    env = {**env, "CUDA_VISIBLE_DEVICES": "0"}
    args = ["--study", str(spec), "--trials", "3", "--trials-per-gpu", "2"]
    out = run_hpo(tmp_path, *args, env=env, check=False)
    assert out.returncode == 1 and "all failed or diverged (out of memory" in out.stderr
    records = {t.number: TrialRecord.of(t) for t in trials_at(tmp_path, "huge")}
    assert all(r.stop_reason == "out_of_memory" for r in records.values() if r.stop_reason)
    retries = {n: r for n, r in records.items() if r.alone}
    assert retries, "no out-of-memory trial was retried alone"
    for r in retries.values():
        origin = records[r.retry_of]
        assert not origin.alone and origin.stop_reason == "out_of_memory"
    # a retry that runs out of memory alone is not retried again
    assert not [r for r in records.values() if r.retry_of in retries]
