"""python -m openmoe2_jax.eval --workdir=DIR --task=text|hellaswag|mmlu [...]

text       validation nats/token and bits/byte on the held-out split of the run's corpus
           (--data=validation, the default) or on any file (.jsonl with a `text` field, or plain text).
hellaswag  0-shot acc / acc_norm (--data or config.eval.hellaswag_file).
mmlu       --shots=0|5 acc / acc_norm on the val split (--data or config.eval.mmlu_dir).

Diffusion models use --mc_samples Monte Carlo samples (128 for final numbers); --proxy scores
multiple choice with one fully-masked pass instead (labelled "proxy" in every output). Results go to
DIR/eval/<task>.json and DIR/tensorboard (eval/<task>/...).
"""
import json
import time

import jax
import numpy as np
from absl import app, flags
from etils import epath
from tensorboardX import SummaryWriter

from openmoe2_jax import cli, objectives
from openmoe2_jax.data import benchmarks, pipeline, sources
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.runtime import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to evaluate.", required=True)
_TASK = flags.DEFINE_enum("task", "text", ["text", "hellaswag", "mmlu"], "What to evaluate.")
_DATA = flags.DEFINE_string("data", "", "text: 'validation' or a file; hellaswag: JSONL; mmlu: data dir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate at most this many questions / batches (0 = all).")
_MC = flags.DEFINE_integer("mc_samples", 0, "Diffusion Monte Carlo samples (0 = config.eval.mc_samples).")
_PROXY = flags.DEFINE_bool("proxy", False, "Diffusion multiple choice: one fully-masked pass (a proxy).")
_SHOTS = flags.DEFINE_integer("shots", 0, "MMLU few-shot examples from the dev split.")
_SEQ = flags.DEFINE_integer("seq_len", 0, "Row length (0 = config.data.seq_len).")
_ROWS = flags.DEFINE_integer("batch_rows", 8, "Rows per forward pass.")
_SEED = flags.DEFINE_integer("seed", 0, "Fixes every mask of the evaluation.")


def _text_rows(trained, data: str, seq_len: int) -> np.ndarray:
    config, tok = trained.config, trained.tokenizer
    if data in ("", "validation"):
        stream = pipeline.load_corpus(config.data, tok, config.eval.seed).validation
    else:
        source = "jsonl" if data.endswith(".jsonl") else "text"
        docs = list(sources.read_documents(source, [data], "text"))
        stream = pipeline.concat_with_eot((tok.encode(d) for d in docs), tok.eot_id)
    rows = pipeline.TokenRows(stream, seq_len)
    if len(rows) == 0:
        raise sources.CorpusError(f"{data or 'the validation split'} has fewer than {seq_len} tokens.")
    return np.stack([rows[i] for i in range(len(rows))])


def evaluate_text(trained, data, seq_len, batch_rows, mc_samples, seed, limit) -> dict:
    objective = objectives.frozen_objective(trained.config.objective, evaluation=True)
    fn = jax.jit(likelihood.make_validation_fn(trained.model, objective, trained.tokenizer.mask_id,
                                               seed, mc_samples))
    rows = _text_rows(trained, data, seq_len)
    batches = [rows[i:i + batch_rows] for i in range(0, len(rows) - batch_rows + 1, batch_rows)]
    if limit:
        batches = batches[:limit]
    if not batches:
        raise sources.CorpusError(f"fewer than --batch_rows={batch_rows} rows of {seq_len} tokens to evaluate.")
    nats = tokens = num_bytes = 0
    ar = objective.kind == "ar"
    for i, b in enumerate(batches):
        out = fn(trained.params, b, i)
        nats += float(out["nats"].sum())
        tokens += int(out["tokens"].sum())
        num_bytes += likelihood.row_bytes(trained.tokenizer, b, skip_first=ar)
    kind = "nll" if ar else f"elbo_{mc_samples}_samples"
    return dict(nats_per_token=nats / tokens, bits_per_byte=likelihood.bits_per_byte(nats, num_bytes),
                tokens=tokens, bytes=num_bytes, estimator=kind)


def evaluate_choice(trained, questions, seq_len, batch_rows, mc_samples, proxy, seed) -> dict:
    causal = trained.config.objective.kind == "ar"
    fn = jax.jit(lambda *a: likelihood.make_conditional_fn(
        trained.model, causal, trained.tokenizer.mask_id, mc_samples, proxy)(trained.params, *a))
    result = benchmarks.score(questions, fn, trained.tokenizer, seq_len, batch_rows, seed)
    result["estimator"] = ("exact" if causal else
                           "proxy (one fully-masked pass)" if proxy else f"monte_carlo_{mc_samples}_samples")
    return result


def main(argv):
    del argv
    cli.quiet_logging()
    with cli.user_errors():
        trained = restore.load(_WORKDIR.value, _STEP.value)
        config = trained.config
        seq_len = _SEQ.value or config.data.seq_len
        mc = _MC.value or config.eval.mc_samples
        t0 = time.time()
        if _TASK.value == "text":
            result = evaluate_text(trained, _DATA.value, seq_len, _ROWS.value, mc, _SEED.value, _LIMIT.value)
        else:
            if _TASK.value == "hellaswag":
                questions = benchmarks.read_hellaswag(_DATA.value or config.eval.hellaswag_file)
            else:
                questions = benchmarks.read_mmlu(_DATA.value or config.eval.mmlu_dir, "val", _SHOTS.value)
            if _LIMIT.value:
                questions = questions[:_LIMIT.value]
            result = evaluate_choice(trained, questions, seq_len, _ROWS.value, mc, _PROXY.value, _SEED.value)
    result.update(task=_TASK.value, step=trained.step, seconds=time.time() - t0,
                  objective=config.objective.kind)
    name = _TASK.value + (f"_{_SHOTS.value}shot" if _TASK.value == "mmlu" else "")
    workdir = epath.Path(_WORKDIR.value)  # local or gs://
    (workdir / "eval").mkdir(parents=True, exist_ok=True)
    (workdir / "eval" / f"{name}.json").write_text(json.dumps(result, indent=2))
    writer = SummaryWriter(str(workdir / "tensorboard"))
    for key in ("nats_per_token", "bits_per_byte", "acc", "acc_norm"):
        if key in result:
            writer.add_scalar(f"eval/{name}/{key}", result[key], trained.step)
    writer.close()
    shown = {k: v for k, v in result.items() if k != "questions"}
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
