"""Evaluation of a restored run (runtime/restore.py): validation-style nats/token and bits/byte on
text, and multiple-choice accuracy, with the run's own routing groups and parameters passed to jitted
functions as arguments. The command line is eval/__main__.py."""
import jax
import numpy as np

from openmoe2_jax import objectives
from openmoe2_jax.data import benchmarks, pipeline, sources
from openmoe2_jax.errors import ConfigError
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.parallel import sharding
from openmoe2_jax.progress import Progress


def text_rows(trained, data: str, seq_len: int) -> np.ndarray:
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


def default_rows(trained, seq_len: int) -> int:
    """The rows of one routing group of the run's training step (8 where routing ignores grouping)."""
    if trained.routing is None:
        return 8
    per_group = trained.routing["tokens_per_group"]
    if per_group % seq_len:
        raise ConfigError(f"--seq_len={seq_len} does not divide this run's routing groups of {per_group} "
                          "tokens: use the run's own seq_len or a divisor of the group")
    return per_group // seq_len


def evaluate_text(trained, data, seq_len, batch_rows, mc_samples, seed, limit) -> dict:
    objective = objectives.frozen_objective(trained.config.objective, evaluation=True)
    fn = jax.jit(likelihood.make_validation_fn(trained.model(batch_rows, seq_len), objective,
                                               trained.tokenizer.mask_id, seed, mc_samples))
    rows = text_rows(trained, data, seq_len)
    batches = [rows[i:i + batch_rows] for i in range(0, len(rows) - batch_rows + 1, batch_rows)]
    if limit:
        batches = batches[:limit]
    if not batches:
        raise sources.CorpusError(f"fewer than --batch_rows={batch_rows} rows of {seq_len} tokens to evaluate.")
    nats = tokens = num_bytes = 0
    ar = objective.kind == "ar"
    progress = Progress(f"eval text ({data or 'validation'}, {batch_rows} rows a batch)", len(batches), "batches")
    shards = sharding.batch_shards(trained.mesh)
    place = sharding.batch_sharding(trained.mesh) if batch_rows % shards == 0 else None
    for i, b in enumerate(batches):
        out = fn(trained.params, jax.device_put(b, place) if place else b, i)
        nats += float(out["nats"].sum())
        tokens += int(out["tokens"].sum())
        num_bytes += likelihood.row_bytes(trained.tokenizer, b, skip_first=ar)
        progress(i + 1)
    kind = "nll" if ar else f"elbo_{mc_samples}_samples"
    return dict(nats_per_token=nats / tokens, bits_per_byte=likelihood.bits_per_byte(nats, num_bytes),
                tokens=tokens, bytes=num_bytes, estimator=kind)


def evaluate_choice(trained, questions, seq_len, batch_rows, mc_samples, proxy, seed, task="choice") -> dict:
    causal = trained.config.objective.kind == "ar"
    scorer = jax.jit(likelihood.make_conditional_fn(trained.model(batch_rows, seq_len), causal,
                                                    trained.tokenizer.mask_id, mc_samples, proxy))
    fn = lambda *a: scorer(trained.params, *a)  # noqa: E731  (the params are arguments, not constants)
    progress = Progress(f"eval {task} ({len(questions):,} questions)", 0, "rows")
    result = benchmarks.score(questions, fn, trained.tokenizer, seq_len, batch_rows, seed, progress)
    result["estimator"] = ("exact" if causal else
                           "proxy (one fully-masked pass)" if proxy else f"monte_carlo_{mc_samples}_samples")
    return result
