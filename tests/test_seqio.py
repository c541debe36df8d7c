"""The seqio vocabulary and task (the `seqio` extra; imports TensorFlow)."""
import numpy as np
import pytest

seqio = pytest.importorskip("seqio", reason="the test extra installs seqio; this is its only user")

from openmoe2_jax.data import seqio_tasks  # noqa: E402
from openmoe2_jax.data.tokenizer import get_tokenizer  # noqa: E402


def test_vocabulary_matches_tiktoken_in_python_and_tf():
    vocab = seqio_tasks.Cl100kVocabulary()
    tok = get_tokenizer()
    text = "And God said, Let there be light: and there was light."
    assert vocab.encode(text) == tok.encode(text)
    assert list(vocab.encode_tf(text).numpy()) == tok.encode(text)
    assert vocab.decode(tok.encode(text) + [tok.eot_id, tok.mask_id]) == text
    assert vocab.decode_tf(vocab.encode_tf(text)).numpy().decode() == text
    assert vocab.eos_id == 100257 and vocab.vocab_size == 100277


def test_bible_task_yields_eos_terminated_chapters():
    (name,) = seqio_tasks.register_tasks()
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length={"targets": 64}, split="validation", shuffle=False, use_cached=False)
    ex = next(iter(ds.as_numpy_iterator()))
    assert ex["targets"][-1] == 100257 and len(ex["targets"]) <= 64
    assert np.all(ex["targets"] < 100277)


def test_eval_tasks_register_and_their_metric_matches_the_scorer(tmp_path):
    from tests.test_eval import _write_fixtures
    _write_fixtures(tmp_path)
    names = seqio_tasks.register_eval_tasks(str(tmp_path / "hellaswag_val.jsonl"), str(tmp_path / "mmlu"))
    assert set(names) == {"openmoe2_hellaswag", "openmoe2_mmlu_0shot", "openmoe2_mmlu_5shot"}
    task = seqio.get_mixture_or_task("openmoe2_hellaswag")
    examples = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False,
                                     use_cached=False).as_numpy_iterator())
    assert len(examples) == 8 and sum(int(e["is_correct"]) for e in examples) == 2
    targets = [seqio_tasks._choice_postprocessor(None, e, is_target=True) for e in examples]
    # Scores that prefer the first choice of every question: question 1 (label 0) is right.
    scores = [-float(e["choice"]) for e in examples]
    metrics = seqio_tasks.multiple_choice_metrics(targets, scores)
    assert metrics["acc"] == 0.5
    mmlu = list(seqio.get_mixture_or_task("openmoe2_mmlu_5shot").get_dataset(
        sequence_length=None, split="validation", shuffle=False, use_cached=False).as_numpy_iterator())
    assert len(mmlu) == 8 and b"What is the Sun?" in mmlu[0]["inputs_pretokenized"]
