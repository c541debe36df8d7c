"""An lm-evaluation-harness model: `openmoe2_jax` (docs/harness.md).

    python -m openmoe2_jax.eval.harness --model openmoe2_jax \\
        --model_args workdir=runs/default,mc_samples=128 --tasks mytask --include_path tasks/ --batch_size 8

Importing the module registers OpenMoE2LM with lm_eval's model registry (lm_eval has no plugin
discovery); run as above, it imports itself and hands over to lm_eval's own command line (any `lm_eval`
arguments work: `run`, `ls tasks`, ...).
From Python: `import openmoe2_jax.eval.harness` before `lm_eval.simple_evaluate(model="openmoe2_jax",
...)`. Needs the `lm_eval` extra (`pip install .[lm_eval]`; no torch).

Model arguments (`--model_args a=1,b=2`):
  workdir=DIR | export=DIR   a training workdir (its latest checkpoint, or step=N) or a directory written
                             by `python -m openmoe2_jax.export`. Exactly one.
  mc_samples=M               diffusion Monte Carlo samples per scored row (default: the run's
                             config.eval.mc_samples, as `python -m openmoe2_jax.eval`; 128 for final numbers)
  batch_size=B               rows per forward pass (default 8; also lm_eval's --batch_size, which the
                             command line always passes: give it there, not in model_args)
  seed=S                     fixes every diffusion mask and every sampled generation (default 0)
  max_length=L               row length (default: the run's config.data.seq_len)
  tokens_per_group=N         only for checkpoints written before routing groups were recorded
  gen_steps, gen_block_length, remasking   the diffusion sampler (eval/generate.py): steps for the
                             canvas (default: one token per step), block length (default: the canvas)

What each request type computes.
  loglikelihood (context, continuation): the project's own multiple-choice scorer (data/benchmarks.py
    score with objectives/likelihood.py make_conditional_fn), request by request. Rows are built as it
    builds them: context and continuation encoded separately, the context left-truncated to fit
    max_length; an empty context is the EOT id (documents follow EOT in training). AR: exact
    log p(continuation | context); is_greedy = every continuation token is the argmax over the real ids.
    Diffusion: the Monte Carlo estimator of the conditional log-likelihood (mc_samples masks of
    stratified size over the continuation; an unbiased estimate of the conditional ELBO, a lower bound
    on log p in expectation). Requests sharing a context are one question: they get the key
    fold_in(PRNGKey(seed), q), q = the order in which the contexts first appear in the call, so a
    question's choices see the same masks, and each question gets the key the project's scorer gives
    question q of the same list. is_greedy is always False for diffusion (not computed).
  loglikelihood_rolling (text): the text's tokens in lm_eval's rolling windows of max_length - 1
    predicted tokens (utils.get_rolling_token_windows, EOT first, made disjoint), each scored as a
    loglikelihood row and summed. AR: exact (each token conditioned on its window). Diffusion: the sum
    over windows of the conditional ELBO estimate: a Monte Carlo estimate of a lower bound, not the
    exact log-likelihood; window w of request i gets the key fold_in(fold_in(PRNGKey(seed), i), w).
  generate_until (context, gen_kwargs): one request at a time, the prompt left-truncated so that prompt
    + canvas fit max_length; canvas = min(max_gen_toks (default 256), max_length - 1) tokens; greedy
    (temperature 0) unless do_sample (at `temperature`, default 1) or temperature > 0 without
    do_sample. AR: eval/generate.py ar_generate. Diffusion: diffusion_generate, which fills the whole
    canvas jointly: a stop sequence cannot end it early, so the canvas is generated and then cut. Both
    end at EOT; the text is cut before the first `until` string. Other generation arguments are ignored
    (with a warning).

Routing groups. Batch-level expert choice (and token choice with a capacity) routes groups of N tokens
of the flattened batch, and N is part of the model's function (runtime/checkpoint.py routing_record):
every forward pass here routes groups of the N tokens the run trained with (from the checkpoint's
record, or the export's config.json). A pass holds `rows` rows of max_length tokens, rows = batch_size
rounded up to a multiple of N / gcd(N, max_length), so the pass splits into whole groups. Requests are
scored in the order lm_eval passes them (task by task, document by document, choice by choice), in
consecutive passes of `rows` rows, the last pass padded by repeating its last row: exactly the batches
of the project's scorer with batch_rows = rows. When a group spans several rows, a row's score depends
on the rows routed with it (as in training); padding slots within a row are never routed
(valid = False). Generation routes its single canvas in one group, the rest of the group padding.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import jax
import numpy as np
from etils import epath
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from openmoe2_jax.data import benchmarks, bpe
from openmoe2_jax.data.tokenizer import Tokenizer
from openmoe2_jax.eval import generate
from openmoe2_jax.export import layout, reader, writer
from openmoe2_jax.models.transformer import ModelConfig, Transformer, with_groups
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.runtime import restore

NAME = "openmoe2_jax"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256   # lm_eval's default
ARGUMENTS = ("workdir", "export", "step", "mc_samples", "batch_size", "seed", "max_length",
             "tokens_per_group", "gen_steps", "gen_block_length", "remasking")
_log = logging.getLogger(__name__)


class HarnessError(ValueError):
    """Bad model arguments, or a request this model cannot score."""


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model to score with, from a workdir or an export."""
    model_cfg: ModelConfig
    params: dict                  # nested host arrays
    tokenizer: Tokenizer
    causal: bool                  # AR (causal attention) or diffusion
    seq_len: int | None           # the run's row length (None: an export that does not record it)
    tokens_per_group: int | None  # batch-level routing: the tokens of one group in training
    mc_samples: int               # the run's config.eval.mc_samples (1 when unknown)
    source: str


def load_workdir(workdir: str, step: int | None = None, tokens_per_group: int = 0) -> Loaded:
    """The latest (or given) checkpoint of a training workdir: params only (runtime/restore.py)."""
    trained = restore.load_params(workdir, step)
    config = trained.config
    group = writer.trained_group_size(trained, workdir, tokens_per_group, "tokens_per_group")
    return Loaded(model_cfg=trained.model_cfg, params=trained.params, tokenizer=trained.tokenizer,
                  causal=config.objective.kind == "ar", seq_len=config.data.seq_len,
                  tokens_per_group=group, mc_samples=config.eval.mc_samples,
                  source=f"workdir {workdir} (step {trained.step})")


def load_export_dir(directory: str) -> Loaded:
    """An export (export/reader.py load_export), its vocabulary checked against its config.json."""
    config, params = reader.load_export(directory)
    described = config["tokenizer"]
    tok = bpe.run_tokenizer(described["name"], [epath.Path(directory) / "tokenizer"], None)
    if (tok.sha256, tok.num_ids) != (described["sha256"], described["num_ids"]):
        raise HarnessError(f"export={directory}: its tokenizer files are not the vocabulary its "
                           f"config.json names ({described['name']}, sha256 {described['sha256'][:12]}...).")
    model_cfg = layout.model_config(config)
    batch_level = model_cfg.moe is not None and layout.routing_level(model_cfg.moe) == "batch"
    run = config.get("source", {}).get("run_config", {})
    return Loaded(model_cfg=model_cfg, params=params, tokenizer=tok, causal=model_cfg.causal,
                  seq_len=run.get("data", {}).get("seq_len"),
                  tokens_per_group=config["moe"]["tokens_per_group"] if batch_level else None,
                  mc_samples=run.get("eval", {}).get("mc_samples", 1), source=f"export {directory}")


def pass_shape(batch_size: int, seq_len: int, tokens_per_group: int | None) -> tuple[int, int]:
    """(rows, groups) of one forward pass: batch_size rows rounded up so that rows x seq_len tokens
    split into whole routing groups of tokens_per_group (None: no batch-level routing, one group)."""
    if not tokens_per_group:
        return batch_size, 1
    rows_per_unit = tokens_per_group // math.gcd(tokens_per_group, seq_len)
    rows = -(-batch_size // rows_per_unit) * rows_per_unit
    return rows, rows * seq_len // tokens_per_group


def first_appearance(items) -> np.ndarray:
    """[R] int: for each item, the rank of its value among the distinct values in order of first
    appearance (a, b, a, c -> 0, 1, 0, 2)."""
    seen: dict = {}
    return np.asarray([seen.setdefault(x, len(seen)) for x in items], np.int32)


def rolling_pairs(ids: list[int], prefix: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """lm_eval's disjoint rolling windows of `ids`: (context, continuation) pairs, each of at most
    seq_len tokens together, every id predicted once, the first conditioned on `prefix`."""
    windows = lm_utils.get_rolling_token_windows(ids, prefix, seq_len - 1, 1)
    return [lm_utils.make_disjoint_window(w) for w in windows]


def cut_at_stops(text: str, until) -> str:
    """`text` up to (not including) the first occurrence of any stop string (as lm_eval's models do)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _positive_int(name: str, value, what: str = "model argument") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HarnessError(f"{what} {name}={value!r}: expected a positive integer.")
    return value


class OpenMoE2LM(LM):
    """openmoe2_jax models (diffusion or AR, dense or MoE) in lm-evaluation-harness; see the module
    docstring for what each request computes and how requests are batched."""

    def __init__(self, workdir: str | None = None, export: str | None = None, step: int | None = None,
                 mc_samples: int | None = None, batch_size: int | str | None = None, seed: int = 0,
                 max_length: int | None = None, tokens_per_group: int = 0, gen_steps: int | None = None,
                 gen_block_length: int | None = None, remasking: str = "low_confidence",
                 max_batch_size: int | None = None, device: str | None = None, **unknown):
        super().__init__()
        del max_batch_size  # lm_eval's automatic batch size search is not used
        if unknown:
            raise HarnessError(f"unknown model argument(s) {', '.join(sorted(unknown))}: expected some of "
                               f"{', '.join(ARGUMENTS)}.")
        if (workdir is None) == (export is None):
            raise HarnessError("model arguments: expected exactly one of workdir=DIR (a training workdir) "
                               "or export=DIR (a directory written by python -m openmoe2_jax.export), got "
                               f"{'both' if workdir is not None else 'neither'}.")
        if step is not None and export is not None:
            raise HarnessError(f"model argument step={step}: only with workdir=DIR (an export holds one "
                               "step).")
        if tokens_per_group and export is not None:
            raise HarnessError(f"model argument tokens_per_group={tokens_per_group}: only with workdir=DIR "
                               "(an export's config.json records its routing groups).")
        if device is not None:
            _log.warning("openmoe2_jax: device=%s ignored: JAX places the model on its default device "
                         "(set JAX_PLATFORMS to choose the backend).", device)
        if remasking not in ("low_confidence", "random"):
            raise HarnessError(f"model argument remasking={remasking!r}: expected low_confidence or random.")
        if batch_size is None or str(batch_size).startswith("auto"):
            batch_size = DEFAULT_BATCH_SIZE
        elif isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)
        batch_size = _positive_int("batch_size", batch_size)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise HarnessError(f"model argument seed={seed!r}: expected an integer.")
        for name, value in (("step", step), ("max_length", max_length), ("gen_steps", gen_steps),
                            ("gen_block_length", gen_block_length)):
            if value is not None:
                _positive_int(name, value)
        if tokens_per_group:
            _positive_int("tokens_per_group", tokens_per_group)

        loaded = load_workdir(str(workdir), step, tokens_per_group) if workdir is not None \
            else load_export_dir(str(export))
        self.seq_len = max_length or loaded.seq_len
        if not self.seq_len:
            raise HarnessError(f"export={export}: its config.json does not record the run's row length "
                               "(source.run_config.data.seq_len); pass max_length=L.")
        self.mc_samples = _positive_int("mc_samples", mc_samples if mc_samples is not None
                                        else loaded.mc_samples)
        self.tokenizer, self.causal, self.seed = loaded.tokenizer, loaded.causal, seed
        self.gen_steps, self.gen_block_length, self.remasking = gen_steps, gen_block_length, remasking
        self.rows, groups = pass_shape(batch_size, self.seq_len, loaded.tokens_per_group)
        gen_rows, gen_groups = pass_shape(1, self.seq_len, loaded.tokens_per_group)
        self._params = jax.device_put(loaded.params)
        tok = self.tokenizer
        score = likelihood.make_conditional_fn(Transformer(with_groups(loaded.model_cfg, groups)),
                                               self.causal, tok.mask_id, self.mc_samples, with_greedy=True)
        self._score = jax.jit(score)
        gen_model = Transformer(with_groups(loaded.model_cfg, gen_groups))
        self._gen_apply = jax.jit(lambda p, t, v: gen_model.apply({"params": p}, t, v))
        self._gen_rows = gen_rows
        _log.info("openmoe2_jax: %s model from %s; rows of %d tokens, %d rows per pass%s; %s",
                  "AR" if self.causal else "diffusion", loaded.source, self.seq_len, self.rows,
                  f" ({groups} routing groups of {loaded.tokens_per_group} tokens, as trained)"
                  if loaded.tokens_per_group else "",
                  "exact log-likelihoods" if self.causal else f"{self.mc_samples} Monte Carlo samples")

    # ----- lm_eval's interface

    @property
    def max_length(self) -> int:
        return self.seq_len

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        del disable_tqdm
        args = [r.args for r in requests]
        pairs = [(self._context_ids(context), self.tokenizer.encode(continuation))
                 for context, continuation in args]
        keys = benchmarks.question_keys(first_appearance(context for context, _ in args), self.seed)
        loglik, greedy = self._score_pairs(pairs, keys, [f"request {i}" for i in range(len(pairs))])
        results = [(float(ll), bool(g)) for ll, g in zip(loglik, greedy)]
        for a, result in zip(args, results):
            self.cache_hook.add_partial("loglikelihood", a, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        del disable_tqdm
        pairs, doc_of, window_of = [], [], []
        for i, r in enumerate(requests):
            windows = rolling_pairs(self.tokenizer.encode(r.args[0]), self.tokenizer.eot_id, self.seq_len)
            pairs += windows
            doc_of += [i] * len(windows)
            window_of += list(range(len(windows)))
        totals = np.zeros(len(requests))
        if pairs:
            keys = np.asarray(jax.vmap(jax.random.fold_in)(benchmarks.question_keys(doc_of, self.seed),
                                                           np.asarray(window_of, np.int32)))
            loglik, _ = self._score_pairs(pairs, keys, [f"request {i}" for i in doc_of])
            np.add.at(totals, np.asarray(doc_of), loglik)
        results = [float(t) for t in totals]
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        del disable_tqdm
        results = []
        for i, r in enumerate(requests):
            context, gen_kwargs = r.args
            text = self._generate_one(context, dict(gen_kwargs or {}), self.seed + i)
            self.cache_hook.add_partial("generate_until", r.args, text)
            results.append(text)
        return results

    # ----- scoring and generation

    def _context_ids(self, context: str) -> list[int]:
        return self.tokenizer.encode(context) or [self.tokenizer.eot_id]

    def _score_pairs(self, pairs, keys, names) -> tuple[np.ndarray, np.ndarray]:
        """(loglik [R], greedy [R]) of (context ids, continuation ids) pairs with per-row keys [R]."""
        if not pairs:
            return np.zeros(0), np.zeros(0, bool)
        for (_, cont), name in zip(pairs, names):
            if len(cont) > self.seq_len - 1:
                raise HarnessError(f"{name}: the continuation is {len(cont)} tokens; this model scores at "
                                   f"most max_length - 1 = {self.seq_len - 1}.")
        tokens, cont, valid = benchmarks.token_rows(pairs, self.seq_len, self.tokenizer.eot_id)
        return benchmarks.run_batches(lambda *batch: self._score(self._params, *batch),
                                      (tokens, cont, valid, np.asarray(keys)), self.rows)

    def _forward(self, canvas):
        """tokens [1, n] (n <= max_length) -> logits [1, n, V]: the canvas in a pass of whole routing
        groups, the rest of the pass padding that is neither attended to nor routed."""
        n = canvas.shape[1]
        tokens = np.full((self._gen_rows, self.seq_len), self.tokenizer.eot_id, np.int32)
        valid = np.zeros((self._gen_rows, self.seq_len), bool)
        tokens[0, :n], valid[0, :n] = np.asarray(canvas)[0], True
        return self._gen_apply(self._params, tokens, valid)[:1, :n]

    def _generate_one(self, context: str, gen_kwargs: dict, seed: int) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = _positive_int("max_gen_toks", gen_kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS),
                                "generation argument")
        temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        temperature = (temperature or 1.0) if gen_kwargs.pop("do_sample", temperature > 0) else 0.0
        if gen_kwargs:
            _log.warning("openmoe2_jax: generation arguments %s ignored.", sorted(gen_kwargs))
        tok = self.tokenizer
        length = min(max_gen, self.seq_len - 1)
        prompt = tok.encode(context)[-(self.seq_len - length):]
        if self.causal:
            sample = generate.ar_generate(self._forward, prompt, length, tok.eot_id, tok.num_ids,
                                          temperature, seed, tok.decode)
        else:
            block = min(self.gen_block_length or length, length)
            length -= length % block
            blocks = length // block
            steps = max(blocks, min(self.gen_steps or length, length) // blocks * blocks)
            sample = generate.diffusion_generate(self._forward, prompt, length, steps, block, tok.mask_id,
                                                 tok.num_ids, tok.eot_id, temperature, self.remasking,
                                                 seed, tok.decode)
        return cut_at_stops(sample.text, until)


def main() -> None:
    """lm_eval's command line, with the model registered (by importing this module under its name)."""
    # pylint: disable=import-outside-toplevel,import-self
    from lm_eval.__main__ import cli_evaluate

    import openmoe2_jax.eval.harness  # noqa: F401
    cli_evaluate()


if __name__ == "__main__":
    main()
else:  # registered once, as openmoe2_jax.eval.harness.OpenMoE2LM (never as __main__'s copy)
    register_model(NAME)(OpenMoE2LM)
