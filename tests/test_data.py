"""The data pipeline: accounting, split, epochs, process sharding, resumable iteration, sources."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openmoe2_jax.data import pipeline, sources
from openmoe2_jax.data.tokenizer import CL100K_SHA256, _sha256, get_tokenizer, offline_bpe_path


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("cl100k_base")


def _stream(n):
    return np.arange(n, dtype=np.int32)


def test_cl100k_loads_offline_with_the_expected_file(tokenizer):
    assert _sha256(offline_bpe_path()) == CL100K_SHA256
    assert tokenizer.num_ids == 100277 and tokenizer.eot_id == 100257 and tokenizer.mask_id == 100277
    assert tokenizer.vocab_size(128) == 100352
    ids = tokenizer.encode("In the beginning God created the heaven and the earth.")
    assert tokenizer.decode(ids) == "In the beginning God created the heaven and the earth."
    # Special-token text is ordinary text, never the EOT control id.
    assert tokenizer.eot_id not in tokenizer.encode("<|endoftext|>")


def test_exact_token_accounting_over_epochs():
    seq, batch, epochs = 8, 4, 3
    tokens = _stream(8 * 10 + 5)                        # 10 full rows, 5-token tail dropped
    ds = pipeline.train_dataset(tokens, seq, batch, epochs, seed=0)
    batches = [ds[i] for i in range(len(ds))]
    assert len(batches) == pipeline.num_train_batches(tokens, seq, batch, epochs) == 10 * 3 // 4
    rows = np.concatenate(batches)
    assert rows.shape == (7 * 4, 8)
    # Every row is a whole aligned slice of the stream, and each epoch is a permutation of all rows.
    starts = rows[:, 0] // 8
    assert np.all(rows == starts[:, None] * 8 + np.arange(8))
    assert sorted(starts[:10]) == list(range(10)) and sorted(starts[10:20]) == list(range(10))


def test_each_epoch_has_a_different_order():
    ds = pipeline.train_dataset(_stream(8 * 50), 8, 50, 3, seed=1)
    epochs = [ds[i][:, 0] // 8 for i in range(3)]
    assert all(sorted(e) == list(range(50)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_processes_see_disjoint_data_that_covers_the_epoch():
    tokens, seq, batch = _stream(8 * 40), 8, 8
    full = pipeline.train_dataset(tokens, seq, batch, 1, seed=2)
    parts = [pipeline.train_dataset(tokens, seq, batch, 1, seed=2, shard=pipeline.Shard(p, 2))
             for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(full) == 5
    for i in range(len(full)):
        a, b = parts[0][i][:, 0], parts[1][i][:, 0]
        assert not set(a) & set(b)
        # The two local halves, stacked in process order, are exactly the single-process global batch.
        np.testing.assert_array_equal(np.concatenate([parts[0][i], parts[1][i]]), full[i])
    covered = np.concatenate([p[i][:, 0] for p in parts for i in range(5)]) // 8
    assert sorted(covered) == list(range(40))


def test_resumed_iterator_yields_exactly_the_uninterrupted_batches():
    ds = pipeline.train_dataset(_stream(8 * 30), 8, 4, 0, seed=3).to_iter_dataset()
    reference = iter(ds)
    expected = [next(reference) for _ in range(12)]
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    resumed = iter(ds)
    resumed.set_state(state)
    for i in range(5, 12):
        np.testing.assert_array_equal(next(resumed), expected[i])


def test_split_is_by_document_deterministic_and_disjoint(tokenizer):
    docs = [f"document number {i} " * 3 for i in range(100)]
    a = pipeline.split_documents(100, 0.1, seed=0)
    assert a.sum() == 10 and np.array_equal(a, pipeline.split_documents(100, 0.1, seed=0))
    train, val, counts = pipeline.tokenize_and_split(docs, tokenizer, 0.1, seed=0)
    assert counts["validation_documents"] == 10
    eot = tokenizer.eot_id
    as_docs = lambda s: {tokenizer.decode(d) for d in np.split(s, np.where(s == eot)[0] + 1) if len(d)}
    train_docs, val_docs = as_docs(train), as_docs(val)
    assert len(train_docs) == 90 and len(val_docs) == 10 and not train_docs & val_docs
    assert train[-1] == eot and val[-1] == eot


def test_bundled_corpus_is_the_kjv_by_chapter():
    docs = list(sources.read_bible())
    assert len(docs) == 1189
    assert docs[0].startswith("Genesis 1\nIn the beginning God created the heaven and the earth.")


def test_jsonl_parquet_and_text_sources_read_the_same_documents(tmp_path):
    texts = ["first document", "second one\nwith two lines", "third"]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)))
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet")
    for i, t in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(t)
    assert list(sources.read_documents("jsonl", [str(tmp_path / "a.jsonl")])) == texts
    assert list(sources.read_documents("parquet", [str(tmp_path / "a.parquet")])) == texts
    assert list(sources.read_documents("text", [str(tmp_path / "doc*.txt")])) == texts


def test_prepared_corpus_round_trips(tmp_path, tokenizer, config):
    config.data.validation_fraction = 0.1
    corpus = pipeline.Corpus(*pipeline.tokenize_and_split([f"doc {i}" for i in range(20)], tokenizer, 0.1, 0))
    pipeline.write_prepared(str(tmp_path), corpus, tokenizer, config.data, 0)
    config.data.update(source="prepared", paths=(str(tmp_path),))
    loaded = pipeline.load_corpus(config.data, tokenizer, seed=0)
    np.testing.assert_array_equal(loaded.train, corpus.train)
    np.testing.assert_array_equal(loaded.validation, corpus.validation)
    assert loaded.counts == corpus.counts
