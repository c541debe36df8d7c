"""Masked (absorbing-state) diffusion with the linear schedule, as docs/science.md §1.

Per row: t ~ U(0, 1) (or low-discrepancy t_i = (u + i/B) mod 1), floored as t <- (1 - eps) t + eps;
each token is replaced by the mask id with probability t; a row with no masked token gets one random
position masked. Loss = sum over rows of (sum of masked CE) / w, divided by the number of real
(non-padding) tokens, with w = t or the realised mask ratio of the row. No target shift.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from openmoe2_jax.objectives import common


def sample_t(rng, batch: int, eps: float, low_discrepancy: bool):
    """[batch] float32 in [eps, 1)."""
    if low_discrepancy:
        u = jax.random.uniform(rng, ())
        t = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    else:
        t = jax.random.uniform(rng, (batch,))
    return (1.0 - eps) * t + eps


def corrupt(rng, tokens, t, valid, mask_id: int):
    """Masks each real token with probability t of its row; at least one per row.

    Args:
      tokens: [b, s] int; t: [b] float; valid: [b, s] bool (real tokens).
    Returns:
      noisy [b, s] int (mask_id where masked), masked [b, s] bool.
    """
    r_mask, r_one = jax.random.split(rng)
    masked = (jax.random.uniform(r_mask, tokens.shape) < t[:, None]) & valid
    # A row with nothing masked masks one uniformly chosen real position.
    length = valid.sum(axis=1)
    forced = jnp.floor(jax.random.uniform(r_one, t.shape) * length).astype(jnp.int32)   # [b]
    none = ~masked.any(axis=1)
    masked = masked | (none[:, None] & (jnp.arange(tokens.shape[1]) == forced[:, None]))
    return jnp.where(masked, mask_id, tokens), masked


def weighted_masked_loss(logits, targets, masked, weight, valid):
    """sum_rows sum_masked CE / weight_row, divided by the number of real tokens.

    logits [b, s, v]; targets, masked, valid [b, s]; weight [b] -> scalar float32.
    """
    return masked_mean(common.cross_entropy(logits, targets), masked, weight, valid)


def masked_mean(ce, masked, weight, valid):
    """The loss of weighted_masked_loss from the per-position CE [b, s]."""
    per_row = jnp.sum(jnp.where(masked, ce, 0.0), axis=1) / weight
    return jnp.sum(per_row) / jnp.maximum(valid.sum(), 1)


def loss(apply_fn, params, tokens, rng, cfg, mask_id: int):
    """Training loss and metrics for a batch `tokens` [b, s] (cfg = config.objective)."""
    r_len, r_t, r_mask = jax.random.split(rng, 3)
    valid = common.random_length_valid(r_len, tokens.shape, cfg.random_length_prob,
                                       cfg.random_length_buckets)
    t = sample_t(r_t, tokens.shape[0], cfg.t_eps, cfg.low_discrepancy)
    noisy, masked = corrupt(r_mask, tokens, t, valid, mask_id)
    out, aux = apply_fn(params, noisy, valid)       # logits, or common.Hidden (the loss makes the logits)
    ratio = masked.sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1)
    weight = t if cfg.weight == "t" else ratio
    if cfg.masked_head and isinstance(out, common.Hidden):
        ce, hits = common.masked_ce_and_hits(out, tokens, masked, cfg.masked_head)
    else:
        ce, hits = common.ce_and_hits(out, tokens)
    value = masked_mean(ce, masked, weight, valid)
    correct = hits & masked
    metrics = dict(
        diffusion_loss=value, objective_loss=value,
        masked_accuracy=correct.sum() / jnp.maximum(masked.sum(), 1),
        mean_t=t.mean(),
        mask_ratio=masked.sum() / jnp.maximum(valid.sum(), 1),
        real_tokens=valid.sum(),
    )
    return value + aux.get("aux_loss", 0.0), {**metrics, **aux}
