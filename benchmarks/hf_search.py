"""hpo against Hugging Face's own search on the LoRA fine-tune study, at equal compute.

    python benchmarks/hf_search.py --seeds 0 1 2 3 4 --budget-s 600 --fresh-seeds 2 \\
        --out benchmarks/results/hf_search.json

(benchmarks/results/kaomoji_lora.md: the run of 2026-12-07, with --fresh-seeds 1.)

Two arms per study seed, each given the same wall-clock budget on this machine, one after the
other (nothing else running):
  - hf:  `Trainer.hyperparameter_search(backend="optuna")` as HF's docs write it: a
         `model_init(trial)`, an `hp_space(trial)` returning TrainingArguments fields,
         `compute_objective` reading eval_f1_macro, direction "maximize", and Optuna's defaults
         otherwise (TPESampler seeded with the study seed, MedianPruner through HF's
         trial.report at each evaluation), `timeout=budget`. The same space as the study
         (examples/kaomoji_lora.py's LoRA parameters, read in model_init; lr, weight decay,
         warmup and batch size in hp_space), the same data, steps and evaluations.
  - hpo: `python -m hpo.run --study kaomoji_lora --seed <study seed> --timeout <budget>`.
Then each arm's chosen config is trained again on --fresh-seeds fresh seeds (1000, 1001, ...)
through hpo's seam and scored on the test split (macro F1): the value a user gets. Reported:
per arm the mean over study seeds, and hpo minus hf paired by study seed (mean, 95%
t-interval, exact permutation p). Each study seed's value is a mean over fresh seeds, so the
interval carries both the search's and the retraining's seed noise. Results are written to
--out as they come, and a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402

from examples import kaomoji_lora  # noqa: E402
from hpo.seam import Run, execute  # noqa: E402
from hpo.study_spec import load_study_spec  # noqa: E402
from hpo.validation.stats import compare_paired  # noqa: E402

STUDY = "kaomoji_lora"
METRIC = "f1_macro"


def fixed() -> dict:
    return load_study_spec(STUDY).fixed_config()


def hf_search(seed: int, budget_s: float, folder: Path) -> dict:
    """HF's own search, as its docs write it, over the study's space."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    config = fixed()
    steps, interval = config["train.max_steps"], config["train.eval_interval"]
    data = kaomoji_lora.splits()
    fractions = [0.0, 0.05, 0.1, 0.2]

    def hp_space(trial: optuna.Trial) -> dict:
        on = trial.suggest_categorical("weight_decay_on", [True, False])
        return {
            "learning_rate": trial.suggest_float("learning_rate", 3e-5, 3e-3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-3, 0.1, log=True) if on else 0.0,
            "warmup_steps": round(trial.suggest_categorical("warmup_frac", fractions) * steps),
            "per_device_train_batch_size": trial.suggest_categorical(
                "per_device_train_batch_size", [16, 32, 64]
            ),
        }

    def model_init(trial: optuna.Trial | None) -> object:
        """The LoRA parameters are sampled here, as HF's docs do for model settings (the
        Trainer calls it once with no trial as it is built)."""
        lora = {
            "lora.r": 8,
            "lora.alpha_ratio": 1.0,
            "lora.dropout": 0.0,
            "lora.targets": "attention",
        }
        if trial is not None:
            lora = {
                "lora.r": trial.suggest_categorical("lora_r", [2, 4, 8, 16, 32]),
                "lora.alpha_ratio": trial.suggest_categorical(
                    "lora_alpha_ratio", [0.5, 1.0, 2.0, 4.0]
                ),
                "lora.dropout": trial.suggest_float("lora_dropout", 0.0, 0.3),
                "lora.targets": trial.suggest_categorical(
                    "lora_targets", list(kaomoji_lora.TARGETS)
                ),
            }
        return kaomoji_lora.build({"model.layers": config["model.layers"], **lora})

    args = TrainingArguments(
        output_dir=str(folder),
        max_steps=steps,
        eval_strategy="steps",
        eval_steps=interval,
        save_strategy="no",
        logging_steps=interval,
        per_device_eval_batch_size=128,
        seed=seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model_init=model_init,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["val"],
        data_collator=DataCollatorWithPadding(data["tokenizer"]),
        compute_metrics=kaomoji_lora.scores,
    )
    start = time.perf_counter()
    best = trainer.hyperparameter_search(
        direction="maximize",
        backend="optuna",
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics[f"eval_{METRIC}"],
        n_trials=10_000,
        timeout=budget_s,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    p = best.hyperparameters
    chosen = {
        "optim.lr": p["learning_rate"],
        "optim.weight_decay": p["weight_decay"] if p["weight_decay_on"] else 0.0,
        "schedule.warmup_frac": p["warmup_frac"],
        "train.batch_size": p["per_device_train_batch_size"],
        "lora.r": p["lora_r"],
        "lora.alpha_ratio": p["lora_alpha_ratio"],
        "lora.dropout": p["lora_dropout"],
        "lora.targets": p["lora_targets"],
    }
    return {"chosen": chosen, "best_val": best.objective, "wall_s": time.perf_counter() - start}


def hpo_search(seed: int, budget_s: float, folder: Path) -> dict:
    """hpo's default on the study, through the command a user types."""
    storage = f"sqlite:///{folder}/hpo.db"
    env = {**os.environ, "HPO_RUNS_DIR": str(folder / "runs")}
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "hpo.run", "--study", STUDY, "--storage", storage]
    cmd += ["--trials", "10000", "--timeout", str(budget_s), "--seed", str(seed), "--no-progress"]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    best = study.best_trial
    from hpo.record import TrialRecord

    config = TrialRecord.of(best).manifest["config"]
    tuned = ("optim.lr", "optim.weight_decay", "schedule.warmup_frac", "train.batch_size")
    chosen = {k: config[k] for k in (*tuned, "lora.r", "lora.alpha_ratio", "lora.dropout")}
    chosen["lora.targets"] = config["lora.targets"]
    wall = time.perf_counter() - start
    return {"chosen": chosen, "best_val": best.value, "wall_s": wall, "trials": len(study.trials)}


def test_f1(chosen: dict, fresh_seed: int) -> float:
    """The chosen config trained on a fresh seed through hpo's seam, scored on test."""
    spec = load_study_spec(STUDY)
    config = {**fixed(), **chosen, "train.seed": fresh_seed}
    with tempfile.TemporaryDirectory() as work:
        run = Run(config, metric=f"val/{METRIC}", minimize=False, checkpoint_dir=work,
                  scores_test=True)  # fmt: skip
        return execute(spec.trainable(), run).test_metrics[f"test/{METRIC}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--budget-s", type=float, default=600)
    p.add_argument("--fresh-seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/hf_search.json")
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    results.update(budget_s=args.budget_s, fresh_seeds=args.fresh_seeds)
    for seed in args.seeds:
        for arm, search in (("hf", hf_search), ("hpo", hpo_search)):
            key = f"{arm}/{seed}"
            if key in results["runs"]:
                continue
            with tempfile.TemporaryDirectory() as folder:
                found = search(seed, args.budget_s, Path(folder))
            fresh = range(1000, 1000 + args.fresh_seeds)
            found["test"] = [test_f1(found["chosen"], s) for s in fresh]
            results["runs"][key] = found
            args.out.write_text(json.dumps(results, indent=1))
            print(key, json.dumps(found), flush=True)
    done = [s for s in args.seeds if f"hf/{s}" in results["runs"] and f"hpo/{s}" in results["runs"]]
    mean = {
        arm: [
            sum(r["test"]) / len(r["test"]) for r in (results["runs"][f"{arm}/{s}"] for s in done)
        ]
        for arm in ("hf", "hpo")
    }
    results["summary"] = {
        "seeds": done,
        "hf_mean": sum(mean["hf"]) / len(done),
        "hpo_mean": sum(mean["hpo"]) / len(done),
        # a paired interval needs two study seeds or more
        "hpo_minus_hf": compare_paired(mean["hpo"], mean["hf"]) if len(done) > 1 else None,
    }
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
