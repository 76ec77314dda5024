import numpy as np
import pytest
import torch

from trainers import CorpusError, TrainConfig
from trainers.corpus import load_corpus
from trainers.data import BatchSampler, eval_windows, load_data
from trainers.tokenizer import ByteTokenizer, CharTokenizer, tokenizer_from_state


def _data_cfg(corpus, cache_dir, **extra):
    return (
        TrainConfig()
        .with_overrides({"data.corpus": str(corpus), "data.cache_dir": str(cache_dir), **extra})
        .data
    )


def test_default_corpus_needs_no_download():
    corpus = load_corpus("stdlib")
    assert len(corpus.text) > 1_000_000
    assert "def " in corpus.text
    assert corpus.fingerprint == load_corpus("stdlib").fingerprint


def test_splits_are_contiguous_and_cover_the_text(tmp_path):
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(2000))
    (tmp_path / "c.txt").write_text(text)
    data = load_data(_data_cfg(tmp_path / "c.txt", tmp_path / "cache"), block_size=8)
    decoded = "".join(
        data.tokenizer.decode(data.tokens[s].tolist()) for s in ("train", "val", "test")
    )
    assert decoded == text
    n = {s: data.tokens[s].numel() for s in ("train", "val", "test")}
    assert n["train"] > 15 * n["val"] > 0 and n["test"] > 0
    assert data.bytes_per_token["val"] == pytest.approx(1.0)


def test_tokenized_arrays_are_cached_by_fingerprint(tmp_path):
    (tmp_path / "c.txt").write_text("abcdefgh" * 500)
    cfg = _data_cfg(tmp_path / "c.txt", tmp_path / "cache")
    first = load_data(cfg, block_size=8)
    files = list((tmp_path / "cache" / "tokens").glob("*.npz"))
    assert len(files) == 1
    second = load_data(cfg, block_size=8)
    assert torch.equal(first.tokens["train"], second.tokens["train"])
    (tmp_path / "c.txt").write_text("zyxwvuts" * 500)  # new content, new fingerprint, new entry
    load_data(cfg, block_size=8)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npz"))) == 2


def test_folder_corpus_reads_text_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second " * 50)
    (tmp_path / "a.md").write_text("first " * 50)
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    text = load_corpus(str(tmp_path)).text
    assert text.startswith("first") and "second" in text and "\x00" not in text


def test_saved_hugging_face_dataset_is_a_corpus(tmp_path):
    import datasets

    datasets.Dataset.from_dict(
        {"text": ["to be or not to be"] * 100, "id": list(range(100))}
    ).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(str(tmp_path / "ds"))
    assert corpus.text.count("to be or not to be") == 100


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("   \n"), "is empty"),
        (lambda p: p.write_text("tiny corpus text"), "fewer than the context"),
    ],
)
def test_bad_corpora_are_clear_errors(tmp_path, setup, message):
    path = tmp_path / "corpus.txt"
    setup(path)
    with pytest.raises(CorpusError, match=message):
        load_data(_data_cfg(path, tmp_path / "cache"), block_size=64)


def test_char_and_byte_tokenizers_round_trip():
    text = "héllo wörld\n"
    char = CharTokenizer.train(text)
    assert char.decode(char.encode(text)) == text
    assert tokenizer_from_state(char.state()).decode(char.encode(text)) == text
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(text)) == text and byte.encode(text).max() < 256


def test_bpe_is_trained_on_the_train_split_only(tmp_path):
    train_text = "".join(f"the cat sat on the mat number {i}\n" for i in range(3000))
    test_word = "zyzzyvaqx "
    (tmp_path / "c.txt").write_text(train_text + test_word * 2000)
    cfg = _data_cfg(
        tmp_path / "c.txt",
        tmp_path / "cache",
        **{"data.tokenizer": "bpe", "data.vocab_size": 400, "data.splits": "0.6,0.2,0.2"},
    )
    data = load_data(cfg, block_size=8)
    ids = data.tokenizer.encode("zyzzyvaqx")
    cat = data.tokenizer.encode(" cat")
    assert len(cat) == 1  # frequent in train: merged
    assert len(ids) > 3  # only in val/test: never merged
    assert data.bytes_per_token["train"] > 2


def test_batches_are_seeded_and_shifted():
    tokens = torch.arange(1000)
    a = BatchSampler(tokens, batch_size=4, block_size=16, seed=7)
    b = BatchSampler(tokens, batch_size=4, block_size=16, seed=7)
    c = BatchSampler(tokens, batch_size=4, block_size=16, seed=8)
    xa, ya = a.next()
    xb, _ = b.next()
    xc, _ = c.next()
    assert xa.shape == (4, 16)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert torch.equal(ya, xa + 1)


def test_eval_windows_are_fixed_and_cover_the_split():
    tokens = torch.zeros(1000)
    assert torch.equal(
        eval_windows(tokens, block_size=10, n_windows=5),
        eval_windows(tokens, block_size=10, n_windows=5),
    )
    full = eval_windows(tokens, block_size=10, n_windows=None)
    assert full[0] == 0 and full[-1] + 10 + 1 <= 1000 and np.all(np.diff(full.numpy()) == 10)
