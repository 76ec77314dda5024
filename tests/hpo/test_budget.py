"""Equal compute per trial when the batch size is tuned: the pruner compares equal tokens."""

import optuna

from hpo.gpt import tokens_per_step
from hpo.objective import Objective
from hpo.record import TrialRecord
from hpo.study_spec import load_study_spec
from trainers import TrainConfig


def test_trials_of_any_batch_size_train_and_report_on_the_same_token_grid(tmp_path, cache_dir):
    spec_file = tmp_path / "batches.yaml"
    spec_file.write_text(
        "description: batch size tuned\n"
        "search_space: {batch_size: {batch_size: [4, 64]}, optimizer: {lr: [1.0e-3, 3.0e-3]}}\n"
        "trainer: {data.max_chars: 200000, model.n_layer: 1, model.n_embd: 32,"
        " model.block_size: 32, train.batch_size: 16, train.max_steps: 48,"
        " train.eval_interval: 16, train.eval_batches: 1}\n"
    )
    spec = load_study_spec(str(spec_file))
    base = TrainConfig.from_dict(spec.fixed_config())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for batch_log2 in (2, 4, 6):  # batch 4, 16 (the fixed config's) and 64
        study.enqueue_trial({"train.batch_size_log2": batch_log2})
    objective = Objective(spec, sets={}, target=9, checkpoint_root=tmp_path / "ckpt")
    study.optimize(objective, n_trials=3)
    for t in study.trials:
        cfg = TrainConfig.from_dict(TrialRecord.of(t).manifest["config"])
        # the same tokens as the fixed config, rounded up to whole steps
        base_tokens = base.train.max_steps * tokens_per_step(base)
        assert base_tokens <= TrialRecord.of(t).max_tokens < base_tokens + tokens_per_step(cfg)
        assert TrialRecord.of(t).tokens == TrialRecord.of(t).max_tokens
        # evaluations reported at the fixed config's steps (16, 32, 48) or just past them
        steps = sorted(t.intermediate_values)
        assert len(steps) == 3
        for k, step in enumerate(steps, start=1):
            assert 16 * k <= step < 16 * k + 16 * tokens_per_step(cfg) / tokens_per_step(base) + 1
    batches = [TrialRecord.of(t).manifest["config"]["train.batch_size"] for t in study.trials]
    assert batches == [4, 16, 64]
    assert TrialRecord.of(study.trials[1]).max_steps == 48  # the fixed shape is unchanged
    assert TrialRecord.of(study.trials[0]).max_steps == 192  # 4x the steps at a quarter the batch
    assert TrialRecord.of(study.trials[2]).max_steps == 12
