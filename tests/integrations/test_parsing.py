"""The adapters' plain parts, in milliseconds: framework metric names to hpo's, a script's
command line and printed lines, and the journal a retried script's history comes from."""

from __future__ import annotations

import sys

import pytest

from hpo.integrations import metric_name, metric_names
from hpo.integrations.script import Journal, _read, command_line
from hpo.seam import ContractError, Run


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("eval_f1", "val/f1"),  # Hugging Face
        ("eval_f1_macro", "val/f1_macro"),
        ("eval_loss", "val/loss"),
        ("test_accuracy", "test/accuracy"),
        ("val_acc", "val/acc"),  # Lightning
        ("val/acc", "val/acc"),
        ("valid_loss", "val/loss"),
        ("train_loss", "train/loss"),
        ("accuracy", "val/accuracy"),  # no split: the default one
        ("eval_runtime", None),  # speeds and counters are not metrics
        ("eval_samples_per_second", None),
        ("epoch", None),
    ],
)
def test_framework_metric_names_become_split_slash_metric(key, name):
    assert metric_name(key, "val") == name


def test_metric_names_keeps_numbers_only():
    got = metric_names({"eval_f1": 0.5, "eval_runtime": 3.0, "eval_note": "x", "epoch": 1}, "val")
    assert got == {"val/f1": 0.5}


def run_in(folder) -> Run:
    return Run({"optim.lr": 0.001, "x": 1}, metric="val/acc", minimize=False, checkpoint_dir=folder)


def test_placeholders_become_single_arguments_and_unknown_keys_are_refused(tmp_path):
    run = run_in(tmp_path)
    args = command_line(
        "{python} t.py --lr {optim.lr} --out {checkpoint_dir} --s={seed}", run.config, run, 7
    )
    assert args == [sys.executable, "t.py", "--lr", "0.001", "--out", str(tmp_path), "--s=7"]
    # a value is one argument, never shell code
    run = Run({"name": "a; rm -rf /"}, metric="m", minimize=False, checkpoint_dir=tmp_path)
    assert command_line("echo {name}", run.config, run, 0) == ["echo", "a; rm -rf /"]
    with pytest.raises(ContractError, match=r"names \{optim.lrr\}, which is not a config key"):
        command_line("t.py {optim.lrr}", run.config, run, 0)
    with pytest.raises(ContractError, match="does not parse"):
        command_line("t.py 'unclosed", run.config, run, 0)


def test_printed_lines_report_save_and_score_and_bad_ones_are_refused(tmp_path):
    run = run_in(tmp_path)
    journal = Journal(tmp_path / "journal.jsonl")
    _read("hpo.report step=10 val/acc=0.5 val/loss=1.2\n", run, journal)
    _read("loss went down\n", run, journal)  # not for hpo
    _read("hpo.save step=10\n", run, journal)
    _read("hpo.report step=20 val/acc=0.7\n", run, journal)
    assert run.history == [
        {"step": 10, "val/acc": 0.5, "val/loss": 1.2},
        {"step": 20, "val/acc": 0.7},
    ]
    for bad in (
        "hpo.report val/acc=0.5",
        "hpo.report step=30 val/acc=high",
        "hpo.report step=1.5 val/acc=1",
    ):
        with pytest.raises(ContractError, match="the script printed"):
            _read(bad, run, journal)

    # a retry resumes from the last save: the reports up to it are its history
    again = Journal(tmp_path / "journal.jsonl")
    assert again.resumed_from == 10
    assert again.earlier == [{"step": 10, "val/acc": 0.5, "val/loss": 1.2}]


def test_a_journal_retried_twice_keeps_one_report_per_step(tmp_path):
    path = tmp_path / "journal.jsonl"
    first = Journal(path)
    first.write("report", 10, {"step": 10, "val/acc": 0.5})
    first.write("save", 10)
    first.write("report", 20, {"step": 20, "val/acc": 0.9})  # lost with the crash after it
    second = Journal(path)  # resumes at 10: the report at 20 is undone
    assert second.resumed_from == 10 and second.earlier == [{"step": 10, "val/acc": 0.5}]
    second.write("report", 20, {"step": 20, "val/acc": 0.6})
    second.write("save", 20)
    path.write_text(path.read_text() + '{"kind": "rep')  # a line a kill cut short
    third = Journal(path)
    assert third.resumed_from == 20
    assert third.earlier == [{"step": 10, "val/acc": 0.5}, {"step": 20, "val/acc": 0.6}]


def test_a_checkpoint_a_kill_cut_short_is_not_resumed_from(tmp_path):
    from hpo.integrations.huggingface import last_complete_checkpoint

    for step in (10, 20, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text("{}")  # 30: weights only
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert not (tmp_path / "checkpoint-30").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None
    # a Trainer resumed at its max_steps trains a step more: the retry resumes before it, and
    # the checkpoint at max_steps goes (the retry writes it again)
    assert last_complete_checkpoint(tmp_path, before=20) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-20").exists()
    assert last_complete_checkpoint(tmp_path, before=10) is None
