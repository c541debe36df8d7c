"""Next-token prediction on the same network with causal attention: mean CE of shifted targets."""
from __future__ import annotations

import jax.numpy as jnp

from openmoe2_jax.objectives import common


def shifted_loss(logits, tokens, valid):
    """Mean CE of predicting tokens[:, 1:] from positions [:, :-1] (both real). -> scalar."""
    ce = common.cross_entropy(logits[:, :-1], tokens[:, 1:])
    scored = valid[:, 1:] & valid[:, :-1]
    return jnp.sum(jnp.where(scored, ce, 0.0)) / jnp.maximum(scored.sum(), 1), scored


def loss(apply_fn, params, tokens, rng, cfg, mask_id: int):
    del mask_id
    valid = common.random_length_valid(rng, tokens.shape, cfg.random_length_prob,
                                       cfg.random_length_buckets)
    logits, aux = apply_fn(params, tokens, valid)
    value, scored = shifted_loss(logits, tokens, valid)
    correct = common.is_argmax(logits[:, :-1], tokens[:, 1:]) & scored
    metrics = dict(ar_loss=value, objective_loss=value, real_tokens=valid.sum(),
                   next_token_accuracy=correct.sum() / jnp.maximum(scored.sum(), 1))
    return value + aux.get("aux_loss", 0.0), {**metrics, **aux}
