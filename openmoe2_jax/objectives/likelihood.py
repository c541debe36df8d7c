"""Likelihoods for diffusion and AR models (docs/science.md §5).

Validation loss.
  diffusion: an unbiased estimate of the ELBO of each row of L tokens,
      -log p(x) <= int_0^1 (1/t) E_{m ~ Bernoulli(t)^L} [sum_{i in m} CE_i(x with m masked)] dt
                 = sum_{l=1}^{L} (1/l) E_{|m| = l} [S(m)]                 (integrating t out: 1/l),
  estimated with `mc_samples` masks per row: sample s masks exactly l_s tokens chosen uniformly, with
  l_s = 1 + floor((s + u_s) L / M) and u_s ~ U(0, 1) (l stratified over 1..L, uniform on average), and
  the row's estimate is mean_s(S(m_s) * L / l_s). Unlike the training loss it has no t floor and no
  forced mask (training masks one token of a row that drew none, which adds about
  int (1 - t)^L / t dt x CE to the expectation), so it is the same bound the AR NLL is compared with.
  The masks come from a key folded with the batch index and the sample index: two checkpoints or two
  runs evaluated with the same seed see exactly the same masks.
  ar: mean next-token CE over the same rows.
  Both are reported in nats/token and bits/byte (nats summed over the scored tokens / ln 2 / the UTF-8
  bytes of those tokens).

Conditional log-likelihood log p(continuation | context).
  ar: exact, the sum of log-softmax picks over the continuation.
  diffusion (Monte Carlo): the context is never masked; sample s of M masks exactly l_s of the T
  continuation tokens with l_s = 1 + floor(s T / M) (stratified over 1..T), and the estimate is
  -mean_s(sum of masked CE * T / l_s). The masks come from a key per question, so every choice of a
  question sees the same random positions.
  proxy (labelled as such): one pass with the whole continuation masked, -sum CE.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from openmoe2_jax.models import transformer
from openmoe2_jax.objectives import common


def token_bytes(tokenizer) -> np.ndarray:
    """[num_ids + 1] UTF-8 byte length of each id (special ids count their text; mask id 0)."""
    enc = tokenizer.encoding
    lengths = np.zeros(tokenizer.num_ids + 1, np.int64)
    special = {v: k for k, v in enc._special_tokens.items()}  # pylint: disable=protected-access
    for i in range(tokenizer.num_ids):
        if i in special:
            lengths[i] = len(special[i].encode("utf-8"))
            continue
        try:
            lengths[i] = len(enc.decode_single_token_bytes(i))
        except KeyError:  # unused ids inside the range
            lengths[i] = 0
    return lengths


def make_validation_fn(model, objective_cfg, mask_id: int, seed: int, mc_samples: int):
    """(params, batch [b, s], batch_index) -> dict(nats=[b] summed nats of each row, tokens=[b]).

    For diffusion, `nats` of a row = the unbiased ELBO estimate of the module docstring (mc_samples
    masks of stratified size); for AR, the exact sum of next-token CE over the row.
    """
    apply = transformer.apply_fn(model)

    def fn(params, batch, batch_index):
        b, s = batch.shape
        valid = jnp.ones((b, s), bool)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), batch_index)
        if objective_cfg.kind == "ar":
            logits, _ = apply(params, batch, valid)
            ce = common.cross_entropy(logits[:, :-1], batch[:, 1:])
            return dict(nats=ce.sum(1), tokens=jnp.full((b,), s - 1), scored_from=jnp.ones((b,), jnp.int32))

        def one_sample(i):
            r_count, r_mask = jax.random.split(jax.random.fold_in(key, i))
            jitter = jax.random.uniform(r_count, (b,))
            counts = jnp.minimum(1 + jnp.floor((i + jitter) * s / mc_samples).astype(jnp.int32), s)  # [b]
            masked = mask_exactly(r_mask, valid, counts)
            logits, _ = apply(params, jnp.where(masked, mask_id, batch), valid)
            ce = common.cross_entropy(logits, batch)
            return jnp.sum(jnp.where(masked, ce, 0.0), axis=1) * s / counts

        nats = jax.lax.map(one_sample, jnp.arange(mc_samples)).mean(0)
        return dict(nats=nats, tokens=jnp.full((b,), s), scored_from=jnp.zeros((b,), jnp.int32))

    return fn


def bits_per_byte(nats: float, num_bytes: int) -> float:
    return nats / math.log(2) / max(num_bytes, 1)


def stratified_counts(length: int, samples: int) -> np.ndarray:
    """l_s = 1 + floor(s T / M), s = 0..M-1: masked-token counts spread evenly over 1..T."""
    return 1 + (np.arange(samples) * length) // samples


def mask_exactly(key, cont, counts):
    """Masks exactly counts[r] of the True positions of cont[r] (uniformly at random).

    cont [R, L] bool; counts [R] int -> [R, L] bool.
    """
    u = jax.random.uniform(key, cont.shape)
    u = jnp.where(cont, u, jnp.inf)
    rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
    return rank < counts[:, None]


def causal_scores(logits, tokens, cont, num_ids: int):
    """Exact AR scores of each row's continuation: (loglik [R], greedy [R] bool).

    logits [R, L, V] of a causal model on tokens [R, L]; cont [R, L] bool marks the continuation (never
    the first slot: it has nothing to condition on). loglik = sum of log p(token | the tokens before
    it) over the continuation; greedy: every continuation token is the argmax over the num_ids real ids
    (what greedy sampling would pick).
    """
    logp = -common.cross_entropy(logits[:, :-1], tokens[:, 1:])                  # [R, L-1]
    scored = cont[:, 1:]
    top = jnp.argmax(logits[:, :-1, :num_ids], axis=-1)
    return (jnp.sum(jnp.where(scored, logp, 0.0), axis=1),
            jnp.all(jnp.where(scored, top == tokens[:, 1:], True), axis=1))


def make_conditional_fn(model, causal: bool, mask_id: int, mc_samples: int, proxy: bool = False,
                        with_greedy: bool = False):
    """(params, tokens [R, L], cont [R, L] bool, valid [R, L] bool, keys [R]) -> loglik [R].

    Each row is context + continuation (+ padding). `keys` are per-row PRNG keys (the same key for
    every choice of one question). Diffusion uses mc_samples masks per row; `proxy` one fully-masked pass.
    with_greedy: return (loglik [R], greedy [R] bool) instead; greedy is causal_scores' for AR and
    False for diffusion (whether the sampler would produce the continuation is not computed).
    """
    apply = transformer.apply_fn(model)

    def fn(params, tokens, cont, valid, keys):
        if causal:
            loglik, greedy = causal_scores(apply(params, tokens, valid)[0], tokens, cont, mask_id)
            return (loglik, greedy) if with_greedy else loglik
        loglik = diffusion_loglik(params, tokens, cont, valid, keys)
        return (loglik, jnp.zeros(loglik.shape, bool)) if with_greedy else loglik

    def diffusion_loglik(params, tokens, cont, valid, keys):
        T = cont.sum(1)                                                     # [R]
        if proxy:
            logits, _ = apply(params, jnp.where(cont, mask_id, tokens), valid)
            return -jnp.sum(jnp.where(cont, common.cross_entropy(logits, tokens), 0.0), axis=1)

        def one_sample(s):
            counts = 1 + (s * T) // mc_samples                              # stratified l_s per row
            masked = jax.vmap(lambda k, c, n: mask_exactly(jax.random.fold_in(k, s), c[None], n[None])[0])(
                keys, cont, counts)
            logits, _ = apply(params, jnp.where(masked, mask_id, tokens), valid)
            ce = jnp.sum(jnp.where(masked, common.cross_entropy(logits, tokens), 0.0), axis=1)
            return ce * T / counts

        return -jax.lax.map(one_sample, jnp.arange(mc_samples)).mean(0)

    return fn


@functools.lru_cache(maxsize=4)
def _cached_bytes(tokenizer):
    return token_bytes(tokenizer)


def row_bytes(tokenizer, rows: np.ndarray, skip_first: bool) -> int:
    """UTF-8 bytes of the scored tokens of `rows` (AR does not score each row's first token)."""
    table = _cached_bytes(tokenizer)
    rows = np.asarray(rows)
    if skip_first:
        rows = rows[:, 1:]
    return int(table[rows].sum())
