import hashlib
import json

import numpy as np
import pytest

from triforge.errors import DataError
from triforge.trainer.data import BPETokenizer, ByteTokenizer, Dataset, GlobalSampler, WindowLoader
from triforge.trainer.data.shards import token_dtype, write_dataset


def test_byte_tokenizer_round_trip_unicode():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'héllo wörld ✓'\n"
    ids = tok.encode(text)
    assert ids.max() < 256 and tok.decode(ids) == text
    assert tok.vocab_size == 258 and tok.eos_id == 256
    assert tok.decode([*ids, tok.eos_id]) == text  # special tokens decode to nothing


def test_bpe_tokenizer_trains_and_round_trips(tmp_path, corpus_dir):
    texts = [p.read_text() for p in sorted(corpus_dir.iterdir())]
    tok = BPETokenizer.train(texts, vocab_size=500)
    sample = "import functools\nclass Foo:\n    pass\n"
    assert tok.decode(tok.encode(sample)) == sample
    assert len(tok.encode(sample)) < len(sample.encode())  # merges compress
    tok.save(tmp_path / "t.json")
    again = BPETokenizer.load(tmp_path / "t.json")
    assert again.encode(sample).tolist() == tok.encode(sample).tolist()
    assert again.eos_id == tok.eos_id


def test_token_dtype_by_vocab():
    assert token_dtype(258) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(128256) == np.uint32


def test_shard_format_round_trip(tmp_path):
    docs = ["aa", "bbb", "c", "dddd", "ee"]
    root = write_dataset(tmp_path / "ds", docs, ByteTokenizer(), val_every=2, fingerprint="x")
    index = json.loads((root / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["splits"]["val"]["num_docs"] == 2
    ds = Dataset(root, verify_checksums=True)
    train = ds.split("train")
    # documents 0, 2, 4 with an <eos> after each
    expected = [97, 97, 256, 99, 256, 101, 101, 256]
    assert train.tokens.tolist() == expected
    assert train.doc_offsets.tolist() == [0, 3, 5]


@pytest.mark.parametrize("damage", ["truncate", "flip", "index", "missing", "docs"])
def test_corrupt_or_missing_files_name_the_file_and_the_fix(tmp_path, damage):
    root = write_dataset(tmp_path / "ds", ["hello", "world"] * 3, ByteTokenizer(), val_every=3,
                         fingerprint="x")
    target = {"truncate": "train.bin", "flip": "train.bin", "index": "index.json",
              "missing": "index.json", "docs": "train.docs.npy"}[damage]
    path = root / target
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-3])
    elif damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[0] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "index":
        path.write_text("{not json")
    elif damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        Dataset(root, verify_checksums=True).split("train")
    message = str(err.value)
    assert target in message and "triforge-prepare" in message and "\n" not in message


def test_sampler_is_deterministic_and_a_permutation_per_epoch():
    a, b = GlobalSampler(10, seed=3), GlobalSampler(10, seed=3)
    first = a.indices(0, 10)
    assert sorted(first.tolist()) == list(range(10))
    assert first.tolist() == b.indices(0, 10).tolist()
    second = a.indices(10, 10)
    assert sorted(second.tolist()) == list(range(10)) and second.tolist() != first.tolist()
    assert GlobalSampler(10, seed=4).indices(0, 10).tolist() != first.tolist()
    # crossing the epoch boundary is the concatenation of both epochs' orders
    assert a.indices(7, 6).tolist() == first[7:].tolist() + second[:3].tolist()


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_sampler_global_order_does_not_depend_on_dp(dp):
    reference = GlobalSampler(37, seed=0)
    global_batches = [reference.next_batch(8).tolist() for _ in range(10)]
    ranks = [GlobalSampler(37, seed=0) for _ in range(dp)]
    for step in range(10):
        union = [i for r, s in enumerate(ranks) for i in s.next_batch(8, dp_rank=r, dp_size=dp)]
        assert union == global_batches[step]
    assert all(s.position == 80 for s in ranks)


def test_sampler_state_round_trip_and_mismatch():
    s = GlobalSampler(50, seed=1)
    s.next_batch(8)
    t = GlobalSampler(50, seed=1)
    t.load_state_dict(s.state_dict())
    assert t.next_batch(8).tolist() == s.next_batch(8).tolist()
    with pytest.raises(DataError, match="differs from this run"):
        GlobalSampler(51, seed=1).load_state_dict(s.state_dict())


def test_loader_windows_overlap_by_one_token_and_doc_ids(small_dataset):
    split = small_dataset.split("train")
    n = WindowLoader.num_samples(split, 16)
    loader = WindowLoader(split, 16, GlobalSampler(n, seed=0))
    w = loader.windows(np.array([0, 1]))
    assert w.shape == (2, 17) and w[0, 16] == w[1, 0]
    docs = loader.doc_ids(np.array([0]))
    assert docs[0, 0] == 0 and (docs[0].diff() >= 0).all()


def _rewrite_index(root, change):
    index = json.loads((root / "index.json").read_text())
    change(index)
    (root / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("damage, fault", [
    (lambda i: i.pop("splits"), "has no train split"),
    (lambda i: i.__setitem__("splits", {"train": {"num_tokens": "many"}}), "malformed 'train'"),
    (lambda i: i.__setitem__("dtype", "float64"), "has dtype 'float64'"),
    (lambda i: i.pop("eos_id"), "has no integer eos_id"),
    (lambda i: i.__setitem__("tokenizer", "byte"), "has no tokenizer entry"),
    (lambda i: i.__setitem__("dtype", "uint32"), r"train.bin has \d+ bytes but index.json expects \d+"),
])
def test_damaged_index_fields_are_named(tmp_path, damage, fault):
    """Fields missing, mistyped or changed (a dtype edit would train on garbage): one
    DataError naming the file and the fault, never a KeyError or TypeError."""
    root = write_dataset(tmp_path / "ds", ["hello", "world"] * 3, ByteTokenizer(), val_every=3,
                         fingerprint="x")
    _rewrite_index(root, damage)
    with pytest.raises(DataError, match=fault) as err:
        Dataset(root, verify_checksums=True).split("train")
    assert "\n" not in str(err.value) and "triforge-prepare" in str(err.value)


def test_token_ids_outside_the_vocabulary_are_found_at_open(tmp_path):
    root = write_dataset(tmp_path / "ds", ["hello", "world"] * 3, ByteTokenizer(), val_every=3,
                         fingerprint="x")
    tokens = np.fromfile(root / "train.bin", dtype=np.uint16)
    tokens[3] = 60000
    tokens.tofile(root / "train.bin")
    _rewrite_index(root, lambda i: i["splits"]["train"].__setitem__(
        "sha256", hashlib.sha256(tokens.data).hexdigest()))
    with pytest.raises(DataError, match=r"holds token id 60000, outside the tokenizer's"):
        Dataset(root, verify_checksums=True).split("train")


def test_a_garbage_tokenizer_file_is_named(tmp_path, corpus_dir):
    tok = BPETokenizer.train([p.read_text() for p in corpus_dir.iterdir()], vocab_size=300)
    root = write_dataset(tmp_path / "ds", ["hello"] * 3, tok, val_every=3, fingerprint="x")
    (root / "tokenizer.json").write_text("{not a tokenizer")
    with pytest.raises(DataError, match=r"tokenizer.json is not a tokenizer file") as err:
        Dataset(root)
    assert "\n" not in str(err.value)
