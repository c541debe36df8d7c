"""seqio integration: cl100k as a `seqio.Vocabulary`, and the bundled corpus as seqio Tasks.

Importing this module imports seqio and TensorFlow (the `seqio` install extra); training never does.
Tasks registered (names prefixed `openmoe2_`):
  openmoe2_bible_text      {"targets": ids} per KJV chapter (train / validation split by document,
                           the same split training uses): the text validation task.
  openmoe2_hellaswag       one example per (question, choice): inputs = context, targets = choice,
                           with `idx` (question) and `is_correct`; score-based metrics acc / acc_norm.
  openmoe2_mmlu_{k}shot    the same for MMLU's val split with k dev examples in the prompt.
A seqio user scores the examples with the model's log-likelihood of `targets` given `inputs` (what
`python -m openmoe2_jax.eval` computes) and seqio's evaluator applies the metric functions.
"""
from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from openmoe2_jax.data import benchmarks, pipeline, sources
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


def _choice_examples(questions) -> tf.data.Dataset:
    rows = dict(idx=[], choice=[], inputs=[], targets=[], is_correct=[], num_chars=[])
    for qi, q in enumerate(questions):
        for ci, choice in enumerate(q.choices):
            rows["idx"].append(qi)
            rows["choice"].append(ci)
            rows["inputs"].append(q.context)
            rows["targets"].append(choice)
            rows["is_correct"].append(ci == q.label)
            rows["num_chars"].append(len(choice))
    return tf.data.Dataset.from_tensor_slices({k: np.asarray(v) for k, v in rows.items()})


def multiple_choice_metrics(targets, scores):
    """acc and acc_norm from per-example log-likelihood `scores`; `targets` are the examples'
    (idx, is_correct, num_chars) as returned by the postprocessor."""
    best, best_norm = {}, {}
    for (idx, correct, chars), score in zip(targets, scores):
        norm = score / max(chars, 1)
        if idx not in best or score > best[idx][0]:
            best[idx] = (score, correct)
        if idx not in best_norm or norm > best_norm[idx][0]:
            best_norm[idx] = (norm, correct)
    n = max(len(best), 1)
    return {"acc": sum(c for _, c in best.values()) / n, "acc_norm": sum(c for _, c in best_norm.values()) / n}


def _choice_postprocessor(output, example=None, is_target=False):
    if is_target:
        return int(example["idx"]), bool(example["is_correct"]), int(example["num_chars"])
    return output


def register_eval_tasks(hellaswag_file: str = "", mmlu_dir: str = "", shots=(0, 5),
                        vocabulary: seqio.Vocabulary | None = None) -> list[str]:
    """Registers openmoe2_hellaswag and openmoe2_mmlu_{k}shot for the given data (idempotent)."""
    vocabulary = vocabulary or Cl100kVocabulary()
    features = {"inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
                "targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)}
    readers = {}
    if hellaswag_file:
        readers["openmoe2_hellaswag"] = lambda: benchmarks.read_hellaswag(hellaswag_file)
    if mmlu_dir:
        for k in shots:
            readers[f"openmoe2_mmlu_{k}shot"] = functools.partial(benchmarks.read_mmlu, mmlu_dir, "val", k)
    for name, read in readers.items():
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                lambda split, shuffle_files=False, seed=None, read=read: _choice_examples(read()),
                splits=("validation",)),
            preprocessors=[seqio.preprocessors.tokenize],
            output_features=features,
            postprocess_fn=_choice_postprocessor,
            metric_fns=[multiple_choice_metrics],
        )
    return list(readers)
