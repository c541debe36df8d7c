"""Multiple-choice benchmarks scored by log-likelihood: HellaSwag and MMLU (docs/science.md §5).

acc: the choice with the highest log p(choice | context); acc_norm: highest log p / len(choice chars)
(lm-evaluation-harness's definition). No downloads: the files come from the config or the CLI.

HellaSwag (0-shot): the official JSONL (`hellaswag_val.jsonl`: ctx_a, ctx_b, activity_label, endings,
label), preprocessed as lm-evaluation-harness does, or the common preprocessed JSONL with fields
query, choices, gold.
MMLU: the official CSV layout (`data/dev/<subject>_dev.csv`, `data/val/<subject>_val.csv`, rows
question, A, B, C, D, answer, no header); k-shot prompts take the first k dev questions of the subject.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re

import jax
import numpy as np

from openmoe2_jax.data.sources import CorpusError

HELLASWAG_HELP = ("HellaSwag: expected a JSONL file such as hellaswag_val.jsonl (published at "
                  "github.com/rowanz/hellaswag, data/hellaswag_val.jsonl).")
MMLU_HELP = ("MMLU: expected a directory with dev/<subject>_dev.csv and val/<subject>_val.csv (the "
             "'data' folder of people.eecs.berkeley.edu/~hendrycks/data.tar).")


@dataclasses.dataclass(frozen=True)
class Question:
    context: str
    choices: tuple[str, ...]
    label: int


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: str) -> list[Question]:
    if not path or not os.path.isfile(path):
        raise CorpusError(f"HellaSwag file {path!r} not found. {HELLASWAG_HELP}")
    questions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                if "query" in r:  # preprocessed variant
                    questions.append(Question(r["query"], tuple(r["choices"]), int(r["gold"])))
                else:
                    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
                    query = _hellaswag_clean(r["activity_label"] + ": " + ctx)
                    questions.append(Question(query, tuple(" " + _hellaswag_clean(e) for e in r["endings"]),
                                              int(r["label"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise CorpusError(f"{path}:{lineno}: not a HellaSwag record ({e!r}). {HELLASWAG_HELP}") from e
    return questions


def _read_mmlu_csv(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    for i, row in enumerate(rows, 1):
        if len(row) != 6 or row[5] not in "ABCD":
            raise CorpusError(f"{path}:{i}: expected question,A,B,C,D,answer. {MMLU_HELP}")
    return rows


def _mmlu_block(row, with_answer: bool) -> str:
    text = row[0] + "".join(f"\n{letter}. {row[1 + i]}" for i, letter in enumerate("ABCD")) + "\nAnswer:"
    return text + (f" {row[5]}\n\n" if with_answer else "")


def read_mmlu(directory: str, split: str = "val", shots: int = 0) -> list[Question]:
    files = sorted(glob.glob(os.path.join(directory or "", split, f"*_{split}.csv")))
    if not directory or not files:
        raise CorpusError(f"MMLU directory {directory!r} has no {split}/*_{split}.csv. {MMLU_HELP}")
    questions = []
    for path in files:
        subject = os.path.basename(path)[:-len(f"_{split}.csv")]
        dev = []
        if shots:
            dev_path = os.path.join(directory, "dev", f"{subject}_dev.csv")
            if not os.path.isfile(dev_path):
                raise CorpusError(f"MMLU {shots}-shot needs {dev_path}. {MMLU_HELP}")
            dev = _read_mmlu_csv(dev_path)[:shots]
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        prefix = header + "".join(_mmlu_block(r, True) for r in dev)
        for row in _read_mmlu_csv(path):
            questions.append(Question(prefix + _mmlu_block(row, False), (" A", " B", " C", " D"),
                                      "ABCD".index(row[5])))
    return questions


def build_rows(questions, tokenizer, seq_len: int, pad_id: int):
    """One row per (question, choice): context (left-truncated) + continuation, padded to seq_len.

    Returns tokens [R, L], cont [R, L] bool, valid [R, L] bool, question index [R], choice index [R].
    """
    pairs, q_of, c_of = [], [], []
    for qi, q in enumerate(questions):
        ctx = tokenizer.encode(q.context)
        for ci, choice in enumerate(q.choices):
            pairs.append((ctx, tokenizer.encode(choice)))
            q_of.append(qi)
            c_of.append(ci)
    return (*token_rows(pairs, seq_len, pad_id), np.asarray(q_of), np.asarray(c_of))


def token_rows(pairs, seq_len: int, pad_id: int):
    """Rows of (context ids, continuation ids) pairs: the continuation cut to its first seq_len - 1 ids,
    the context left-truncated to fill the rest, then padding to seq_len.

    Returns tokens [R, L] int32, cont [R, L] bool (the continuation's slots), valid [R, L] bool.
    """
    tokens, cont, valid = [], [], []
    for ctx, c in pairs:
        c = list(c)[:seq_len - 1]
        x = (list(ctx)[-(seq_len - len(c)):] if len(ctx) + len(c) > seq_len else list(ctx)) + c
        n = len(x)
        tokens.append(x + [pad_id] * (seq_len - n))
        cont.append([False] * (n - len(c)) + [True] * len(c) + [False] * (seq_len - n))
        valid.append([True] * n + [False] * (seq_len - n))
    return (np.asarray(tokens, np.int32).reshape(-1, seq_len), np.asarray(cont, bool).reshape(-1, seq_len),
            np.asarray(valid, bool).reshape(-1, seq_len))


def run_batches(fn, arrays, batch_rows: int, progress=None):
    """fn(*batch) over consecutive batches of `batch_rows` rows of `arrays` (each [R, ...]); the last
    batch is padded by repeating its last row, so fn compiles once. Returns fn's outputs (an array or
    a tuple of arrays, each [batch_rows, ...] per call) concatenated over the R real rows.
    progress: called with the rows done after each batch (e.g. a progress.Progress)."""
    outs = []
    for start in range(0, len(arrays[0]), batch_rows):
        n = min(batch_rows, len(arrays[0]) - start)
        pad = lambda a: np.concatenate([a, np.repeat(a[-1:], batch_rows - n, 0)]) if n < batch_rows else a
        out = fn(*(pad(np.asarray(a[start:start + n])) for a in arrays))
        outs.append(jax.tree.map(lambda o: np.asarray(o)[:n], out))
        if progress:
            progress(start + n)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def question_keys(q_of, seed: int) -> np.ndarray:
    """[R] PRNG keys, fold_in(PRNGKey(seed), q_of[r]): every row of one question gets the same key."""
    base = jax.random.PRNGKey(seed)
    return np.asarray(jax.vmap(lambda q: jax.random.fold_in(base, q))(np.asarray(q_of, np.int32)))


def score(questions, loglik_fn, tokenizer, seq_len: int, batch_rows: int, seed: int = 0,
          progress=None) -> dict:
    """acc / acc_norm of `questions`; loglik_fn(tokens, cont, valid, keys) -> [R] log-likelihoods.
    progress(rows done, rows in all): called after each batch of rows (one row per choice).

    Rows are scored in fixed-size batches (the last one padded) so the function compiles once.
    Every choice of question q uses the key fold_in(PRNGKey(seed), q): the same masks.
    """
    tokens, cont, valid, q_of, c_of = build_rows(questions, tokenizer, seq_len, tokenizer.eot_id)
    loglik = run_batches(loglik_fn, (tokens, cont, valid, question_keys(q_of, seed)), batch_rows,
                         progress and (lambda done: progress(done, len(tokens))))
    correct, correct_norm = 0, 0
    per_question = []
    for qi, q in enumerate(questions):
        ll = loglik[q_of == qi][np.argsort(c_of[q_of == qi])]
        norm = ll / np.asarray([max(len(c), 1) for c in q.choices])
        correct += int(np.argmax(ll) == q.label)
        correct_norm += int(np.argmax(norm) == q.label)
        per_question.append(dict(loglik=ll.tolist(), label=q.label))
    n = len(questions)
    return dict(acc=correct / n, acc_norm=correct_norm / n, num_questions=n, questions=per_question)
