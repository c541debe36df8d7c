"""Token streams -> fixed-length rows -> grain: shuffle per epoch, repeat, shard per process, batch.

Packing (docs/science.md §1): documents are concatenated, each followed by EOT, and the stream is cut into
rows of `seq_len` tokens with no padding (the tail shorter than a row is dropped). A row may span a
document boundary; attention is not blocked there, as in LLaDA and MegaDLMs.

Train/validation split: by document, a fixed fraction chosen by a seeded permutation (the trainer seeds
it with config.eval.seed, not the training seed), so the two sets never share a document and the split
does not depend on the number of processes or the training seed. The split is made on the text, before
tokenizing, so that a tokenizer trained per run (bpe:N) sees the training documents only.

Order: `grain.MapDataset.source(rows).seed(seed).shuffle().repeat(num_epochs)` draws a fresh
permutation every epoch; in every global batch each process takes its own contiguous block of
`batch_size / process_count` rows, so the global batch is the same whatever the process count. The iterator's state (one integer) is saved in every
checkpoint, so a resumed run continues with exactly the next batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable

import grain
import numpy as np

from openmoe2_jax.data import bpe, sources
from openmoe2_jax.data.tokenizer import Tokenizer, bpe_num_ranks

TOKEN_DTYPE = np.int32
PREPARED_FILES = ("train.npy", "validation.npy", "meta.json")


class TokenRows:
    """Random-access rows of `seq_len` tokens over a 1-D token stream (in memory or memory-mapped)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len], dtype=TOKEN_DTYPE)


def split_documents(num_docs: int, validation_fraction: float, seed: int) -> np.ndarray:
    """Boolean [num_docs]: True for the held-out documents. At least one of each kind."""
    if num_docs < 2:
        raise sources.CorpusError(
            f"the corpus has {num_docs} document(s); a train/validation split needs at least 2")
    num_val = min(max(1, round(num_docs * validation_fraction)), num_docs - 1)
    is_val = np.zeros(num_docs, bool)
    is_val[np.random.default_rng(seed).permutation(num_docs)[:num_val]] = True
    return is_val


def concat_with_eot(docs: Iterable[list[int]], eot_id: int) -> np.ndarray:
    """One stream: each document's ids followed by EOT."""
    parts = []
    for ids in docs:
        parts.append(np.asarray(ids, TOKEN_DTYPE))
        parts.append(np.asarray([eot_id], TOKEN_DTYPE))
    return np.concatenate(parts) if parts else np.zeros([0], TOKEN_DTYPE)


@dataclasses.dataclass
class TextSplit:
    """A corpus's non-empty documents, split by document into training and validation text."""
    train: list[str]
    validation: list[str]


def split_texts(docs: list[str], validation_fraction: float, seed: int) -> TextSplit:
    """The training and validation documents of `docs` (empty ones dropped; order kept)."""
    docs = [d for d in docs if d]
    if not docs:
        raise sources.CorpusError("the corpus is empty: no non-empty document was read")
    is_val = split_documents(len(docs), validation_fraction, seed)
    return TextSplit(train=[d for d, v in zip(docs, is_val) if not v],
                     validation=[d for d, v in zip(docs, is_val) if v])


def read_split(data_config, seed: int) -> TextSplit:
    """The configured raw corpus (not `prepared`), read and split as text."""
    docs = list(sources.read_documents(data_config.source, data_config.paths, data_config.text_field))
    return split_texts(docs, data_config.validation_fraction, seed)


def tokenize_split(split: TextSplit, tokenizer: Tokenizer):
    """(train stream, validation stream, counts) of a split corpus."""
    train = concat_with_eot(tokenizer.encode_batch(split.train), tokenizer.eot_id)
    val = concat_with_eot(tokenizer.encode_batch(split.validation), tokenizer.eot_id)
    counts = dict(documents=len(split.train) + len(split.validation),
                  validation_documents=len(split.validation),
                  train_tokens=int(train.size), validation_tokens=int(val.size))
    return train, val, counts


def tokenize_and_split(docs: list[str], tokenizer: Tokenizer, validation_fraction: float, seed: int):
    """(train stream, validation stream, counts) of a list of documents."""
    return tokenize_split(split_texts(docs, validation_fraction, seed), tokenizer)


@dataclasses.dataclass
class Corpus:
    """A tokenized corpus split into train and validation token streams."""
    train: np.ndarray
    validation: np.ndarray
    counts: dict


def load_corpus(data_config, tokenizer: Tokenizer, seed: int, split: TextSplit | None = None) -> Corpus:
    """Reads and tokenizes the configured corpus (or tokenizes `split`, the same corpus already read),
    or memory-maps a prepared one; keeps only the first `data_config.max_train_tokens` training tokens
    when that is set (a unique-token budget)."""
    if data_config.source == "prepared":
        corpus = load_prepared(data_config.paths[0], data_config, tokenizer)
    else:
        corpus = Corpus(*tokenize_split(split if split is not None else read_split(data_config, seed),
                                        tokenizer))
    limit = data_config.max_train_tokens
    if limit:
        if limit > len(corpus.train):
            raise sources.CorpusError(
                f"config.data.max_train_tokens = {limit:,} exceeds the {len(corpus.train):,} training "
                "tokens of the corpus.")
        corpus = Corpus(corpus.train[:limit], corpus.validation, dict(corpus.counts, train_tokens=limit))
    return corpus


def write_prepared(out_dir: str, corpus: Corpus, tokenizer: Tokenizer, data_config, seed: int) -> None:
    """Writes train.npy / validation.npy token streams and meta.json (what made them); a bpe:N
    vocabulary is saved beside them (bpe_N.tiktoken, bpe_N.json: data/bpe.py)."""
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "train.npy"), corpus.train)
    np.save(os.path.join(out_dir, "validation.npy"), corpus.validation)
    if bpe_num_ranks(tokenizer.name) is not None:
        bpe.save(out_dir, tokenizer)
    meta = dict(tokenizer=tokenizer.name, tokenizer_sha256=tokenizer.sha256, num_ids=tokenizer.num_ids,
                eot_id=tokenizer.eot_id,
                source=data_config.source, paths=list(data_config.paths),
                text_field=data_config.text_field,
                validation_fraction=data_config.validation_fraction, seed=seed, **corpus.counts)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_prepared(directory: str, data_config, tokenizer: Tokenizer) -> Corpus:
    missing = [f for f in PREPARED_FILES if not os.path.exists(os.path.join(directory, f))]
    if missing:
        raise sources.CorpusError(
            f"config.data.paths[0] = {directory!r} is not a prepared corpus: missing {missing}; "
            "write one with `python -m openmoe2_jax.data.prepare`.")
    try:
        with open(os.path.join(directory, "meta.json")) as f:
            meta = json.load(f)
        train = np.load(os.path.join(directory, "train.npy"), mmap_mode="r")
        val = np.load(os.path.join(directory, "validation.npy"), mmap_mode="r")
    except (ValueError, OSError) as e:
        raise sources.CorpusError(f"{directory}: the prepared corpus is corrupt ({e})") from e
    if (meta.get("num_ids") != tokenizer.num_ids or meta.get("eot_id") != tokenizer.eot_id
            or meta.get("tokenizer_sha256", tokenizer.sha256) != tokenizer.sha256):
        raise sources.CorpusError(
            f"{directory} was tokenized with {meta.get('tokenizer')!r} ({meta.get('num_ids')} ids, "
            f"sha256 {meta.get('tokenizer_sha256', 'not recorded')}); config.data.tokenizer = "
            f"{tokenizer.name!r} has {tokenizer.num_ids} ids, sha256 {tokenizer.sha256}.")
    if meta.get("validation_fraction") != data_config.validation_fraction:
        raise sources.CorpusError(
            f"{directory} was split with validation_fraction {meta.get('validation_fraction')}; "
            f"config.data.validation_fraction = {data_config.validation_fraction}. Use the same "
            "value or prepare the corpus again.")
    for name, arr in (("train", train), ("validation", val)):
        if arr.ndim != 1 or arr.dtype != TOKEN_DTYPE:
            raise sources.CorpusError(f"{directory}/{name}.npy: expected a 1-D int32 token stream, "
                                      f"got shape {arr.shape} dtype {arr.dtype}")
    counts = {k: meta[k] for k in ("documents", "validation_documents", "train_tokens",
                                   "validation_tokens") if k in meta}
    return Corpus(train, val, counts)


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which slice of every global batch this process loads."""
    index: int = 0
    count: int = 1


def train_dataset(tokens: np.ndarray, seq_len: int, global_batch: int, num_epochs: int, seed: int,
                  shard: Shard = Shard()) -> grain.MapDataset:
    """Batches [global_batch / shard.count, seq_len] int32 of this process; `num_epochs` 0 = no end."""
    rows = TokenRows(tokens, seq_len)
    if len(rows) == 0:
        raise sources.CorpusError(
            f"the training split has {len(tokens)} tokens, fewer than one row of "
            f"config.data.seq_len = {seq_len}")
    ds = grain.MapDataset.source(rows).seed(seed).shuffle()
    ds = ds.repeat(num_epochs if num_epochs > 0 else None)
    return _local_rows(ds, global_batch, shard).batch(global_batch // shard.count, drop_remainder=True)


def _local_rows(ds: grain.MapDataset, global_batch: int, shard: Shard) -> grain.MapDataset:
    """This process's rows: in global batch j (rows [jB, (j+1)B) of `ds`), the contiguous block
    [jB + p b, jB + (p+1) b) with b = B / processes. So the processes' local batches, stacked in process
    order, are exactly the single-process global batch: a run's losses do not depend on how many
    processes load its data. Each process reads only its own rows."""
    local = global_batch // shard.count
    size = len(ds) // global_batch * local
    return grain.MapDataset.range(size).map(
        lambda i: ds[(i // local) * global_batch + shard.index * local + i % local])


def num_train_batches(tokens: np.ndarray, seq_len: int, global_batch: int, num_epochs: int) -> int | None:
    """Global batches the training data yields; None when it repeats without end."""
    if num_epochs == 0:
        return None
    return (len(tokens) // seq_len) * num_epochs // global_batch


def validation_batches(tokens: np.ndarray, seq_len: int, global_batch: int, num_batches: int,
                       shard: Shard = Shard()) -> list[np.ndarray]:
    """The first `num_batches` (or fewer, if the split is small) batches of validation rows, in order."""
    rows = TokenRows(tokens, seq_len)
    available = len(rows) // global_batch
    if available == 0:
        raise sources.CorpusError(
            f"the validation split has {len(rows)} rows of {seq_len} tokens, fewer than one batch of "
            f"{global_batch}; raise config.data.validation_fraction or lower config.train.batch_size")
    ds = grain.MapDataset.source(rows)[:min(num_batches, available) * global_batch]
    ds = _local_rows(ds, global_batch, shard).batch(global_batch // shard.count, drop_remainder=True)
    return [ds[i] for i in range(len(ds))]
