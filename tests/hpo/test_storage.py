"""hpo.storage on SQLite: two workers asking at the same moment never take the same queued trial."""

import multiprocessing

import optuna

from hpo.storage import open_storage

ROUNDS = 25


def _ask_in_step(url: str, barrier, taken) -> None:
    study = optuna.load_study(study_name="queue", storage=open_storage(url))
    for _ in range(ROUNDS):
        barrier.wait()  # both workers ask together
        taken.put(study.ask().number)


def test_two_workers_never_take_the_same_queued_trial(tmp_path):
    # Optuna reads a queued trial's state, then marks it running; without a transaction around
    # both, two workers asking at once took the same trial about one time in three, and the
    # second to finish it failed ("Cannot tell a COMPLETE trial")
    url = f"sqlite:///{tmp_path}/hpo.db"
    study = optuna.create_study(study_name="queue", storage=open_storage(url))
    for i in range(2 * ROUNDS):
        study.enqueue_trial({"x": float(i)})
    ctx = multiprocessing.get_context("spawn")
    barrier, taken = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_ask_in_step, args=(url, barrier, taken)) for _ in range(2)]
    for w in workers:
        w.start()
    numbers = [taken.get(timeout=120) for _ in range(2 * ROUNDS)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert sorted(numbers) == list(range(2 * ROUNDS))  # each queued trial taken once
