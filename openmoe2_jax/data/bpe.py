"""`bpe:N` vocabularies: a byte-level BPE of N ranks trained on a run's training split, encoded by tiktoken.

`rustbpe` learns the N - 256 merges (about a second on the bundled corpus) and returns them as
tiktoken ranks {token bytes: rank} with a GPT-4-style split pattern; encoding, decoding and bits/byte
then go through tiktoken exactly as for cl100k (data/tokenizer.py `from_ranks`, EOT = N).

Only the training split is given to `train`: data/pipeline.py splits the corpus by document as text
before any tokenizer exists, so the validation documents cannot shape the vocabulary.

Files, in a run's WORKDIR/tokenizer/ and beside a prepared corpus's token shards:
  bpe_N.tiktoken  tiktoken's rank format: one `base64(token bytes) rank` line per rank, in rank order
  bpe_N.json      {tokenizer, num_ranks, eot_id, pattern, sha256 of bpe_N.tiktoken}
Once saved, a vocabulary is loaded, never trained again: a resumed run, eval and sample use the run's.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Iterable, Sequence

import rustbpe
from etils import epath

from openmoe2_jax.data import sources
from openmoe2_jax.data.tokenizer import Tokenizer, VocabularyError, bpe_num_ranks, from_ranks, get_tokenizer

# rustbpe's default, GPT-4-style split pattern, given explicitly so that the project, not a library
# default, fixes how text is cut into chunks before merging; each saved vocabulary's json records it.
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
           r"""\s*[\r\n]|\s+(?!\S)|\s+""")


def train(texts: Iterable[str], num_ranks: int) -> dict[bytes, int]:
    """{token bytes: rank} of a byte-level BPE with `num_ranks` ranks (the 256 bytes, then the merges in
    the order learned) from `texts`.

    Deterministic: a merge is the most frequent pair of the texts' chunks, ties to the smaller pair,
    so the same texts (in any order) give the same ranks.
    """
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), num_ranks, pattern=PATTERN)
    pairs = trainer.get_mergeable_ranks()
    ranks = {bytes(token): rank for token, rank in pairs}
    if len(pairs) < num_ranks:
        raise sources.CorpusError(
            f"config.data.tokenizer = 'bpe:{num_ranks}': the training split holds only "
            f"{len(pairs) - 256} distinct merges ({len(pairs)} ranks); use a smaller N or a larger corpus.")
    if len(ranks) != len(pairs):
        raise VocabularyError(f"bpe:{num_ranks}: rustbpe learned two merges with the same bytes; tiktoken "
                              "needs one rank per token. Use another N.")
    return ranks


def serialize(ranks: dict[bytes, int]) -> bytes:
    """The .tiktoken file of `ranks`: `base64(token) rank` lines in rank order (tiktoken's format)."""
    lines = (base64.b64encode(token) + b" " + str(rank).encode()
             for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return b"\n".join(lines) + b"\n"


def parse(data: bytes, where: str) -> dict[bytes, int]:
    """Inverse of `serialize`; errors name `where` and the line."""
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise VocabularyError(f"{where}:{lineno}: expected `base64(token) rank`, got "
                                  f"{line[:80]!r}") from e
    return ranks


def sha256(ranks: dict[bytes, int]) -> str:
    """The vocabulary's identity: sha256 of its .tiktoken file."""
    return hashlib.sha256(serialize(ranks)).hexdigest()


def tokenizer(name: str, ranks: dict[bytes, int], pattern: str = PATTERN) -> Tokenizer:
    """The `bpe:N` tokenizer of trained `ranks` (EOT = N, mask = N + 1)."""
    return from_ranks(name, ranks, pattern, sha256(ranks))


def files(directory, name: str) -> tuple[epath.Path, epath.Path]:
    """(bpe_N.tiktoken, bpe_N.json) of tokenizer `name` = bpe:N in `directory` (local or gs://)."""
    stem = f"bpe_{bpe_num_ranks(name)}"
    directory = epath.Path(directory)
    return directory / f"{stem}.tiktoken", directory / f"{stem}.json"


def save(directory, tok: Tokenizer) -> None:
    """Writes `tok`'s bpe_N.tiktoken and bpe_N.json into `directory` (created if needed)."""
    ranks_path, meta_path = files(directory, tok.name)
    ranks_path.parent.mkdir(parents=True, exist_ok=True)
    ranks = tok.encoding._mergeable_ranks  # pylint: disable=protected-access
    ranks_path.write_bytes(serialize(ranks))
    meta = dict(tokenizer=tok.name, num_ranks=len(ranks), eot_id=tok.eot_id,
                pattern=tok.encoding._pat_str, sha256=tok.sha256)  # pylint: disable=protected-access
    meta_path.write_text(json.dumps(meta, indent=2))


def load(directory, name: str) -> Tokenizer:
    """The `bpe:N` tokenizer saved in `directory`, checked against its json (sha256, N)."""
    ranks_path, meta_path = files(directory, name)
    for path in (ranks_path, meta_path):
        if not path.exists():
            raise VocabularyError(f"{path} does not exist: config.data.tokenizer = {name!r} needs the "
                                  "vocabulary the run trained, saved there.")
    data = ranks_path.read_bytes()
    try:
        meta = json.loads(meta_path.read_text())
        pattern, recorded = meta["pattern"], meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise VocabularyError(f"{meta_path} is not a vocabulary record ({e!r})") from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise VocabularyError(
            f"{ranks_path} has sha256 {actual}, but {meta_path} records {recorded}: the saved "
            f"vocabulary of {name!r} was changed after it was trained. Restore it, or use another "
            "--workdir. Nothing was changed.")
    ranks = parse(data, str(ranks_path))
    if len(ranks) != bpe_num_ranks(name):
        raise VocabularyError(f"{ranks_path} holds {len(ranks)} ranks; config.data.tokenizer = {name!r} "
                              f"needs {bpe_num_ranks(name)}.")
    return from_ranks(name, ranks, pattern, actual)


def run_tokenizer(name: str, saved: Sequence, train_texts: Iterable[str] | None) -> Tokenizer:
    """The tokenizer of a run whose config.data.tokenizer is `name`.

    cl100k names: the fixed vocabulary. bpe:N: loaded from the first of the `saved` directories (the
    run's WORKDIR/tokenizer, then a prepared corpus's directory) that holds bpe_N.tiktoken, never
    trained again; otherwise trained on `train_texts`, the training split's documents only.
    """
    if bpe_num_ranks(name) is None:
        return get_tokenizer(name)
    for directory in saved:
        if files(directory, name)[0].exists():
            return load(directory, name)
    if train_texts is None:
        where = " or ".join(str(files(d, name)[0]) for d in saved) or "no directory"
        raise VocabularyError(f"config.data.tokenizer = {name!r}: {where} does not exist, and there "
                              "is no raw corpus to train it on.")
    return tokenizer(name, train(train_texts, bpe_num_ranks(name)))

