"""seqio integration: cl100k as a `seqio.Vocabulary`, and the bundled corpus as seqio Tasks.

Importing this module imports seqio and TensorFlow (the `seqio` install extra); training never does.
Tasks registered (names prefixed `openmoe2_`):
  openmoe2_bible_text   {"targets": ids} per KJV chapter (train / validation split by document,
                        the same split training uses).
"""
from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from openmoe2_jax.data import pipeline, sources
from openmoe2_jax.data.tokenizer import get_tokenizer


class Cl100kVocabulary(seqio.Vocabulary):
    """tiktoken cl100k_base for seqio; EOS = EOT (100257). Ids above the encoding's are dropped on
    decode (the mask id and padding)."""

    def __init__(self, name: str = "cl100k_base", extra_ids: int = 0):
        self._tokenizer = get_tokenizer(name)
        super().__init__(extra_ids=extra_ids)

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        return self._tokenizer.eot_id

    @property
    def unk_id(self) -> int | None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.num_ids

    def _encode(self, s: str):
        return self._tokenizer.encode(s)

    def _decode(self, ids):
        ids = [i for i in ids if 0 <= i < self._tokenizer.num_ids and i != self.eos_id]
        return self._tokenizer.encoding.decode(ids)

    def _encode_tf(self, s):
        ids = tf.py_function(lambda x: tf.constant(self._encode(x.numpy().decode("utf-8")), tf.int32),
                             [s], tf.int32)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids):
        return tf.py_function(lambda x: tf.constant(self._decode(x.numpy().tolist())), [ids], tf.string)

    def __eq__(self, other):
        return isinstance(other, Cl100kVocabulary) and other.tokenizer.name == self.tokenizer.name

    def __hash__(self):
        return hash(("Cl100kVocabulary", self._tokenizer.name))


def _bible_split(split: str, shuffle_files: bool = False, seed: int | None = None,
                 validation_fraction: float = 0.02, split_seed: int = 0) -> tf.data.Dataset:
    del shuffle_files, seed
    docs = list(sources.read_bible())
    is_val = pipeline.split_documents(len(docs), validation_fraction, split_seed)
    chosen = [d for d, v in zip(docs, is_val) if v == (split == "validation")]
    return tf.data.Dataset.from_tensor_slices({"text": np.asarray(chosen, dtype=object)})


def register_tasks(vocabulary: seqio.Vocabulary | None = None) -> list[str]:
    """Registers the openmoe2_ tasks (idempotent); returns their names."""
    vocabulary = vocabulary or Cl100kVocabulary()
    name = "openmoe2_bible_text"
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(functools.partial(_bible_split),
                                            splits=("train", "validation")),
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features={"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)},
        )
    return [name]
