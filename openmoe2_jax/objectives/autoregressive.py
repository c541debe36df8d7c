"""Next-token prediction on the same network with causal attention: mean CE of shifted targets."""
from __future__ import annotations

import jax.numpy as jnp

from openmoe2_jax.objectives import common


def shifted_loss(logits, tokens, valid):
    """Mean CE of predicting tokens[:, 1:] from positions [:, :-1] (both real). -> scalar."""
    return shifted_mean(common.cross_entropy(logits[:, :-1], tokens[:, 1:]), valid)


def shifted_mean(ce, valid):
    """shifted_loss from the CE [b, s-1] of each position's next token: (mean, scored [b, s-1])."""
    scored = valid[:, 1:] & valid[:, :-1]
    return jnp.sum(jnp.where(scored, ce, 0.0)) / jnp.maximum(scored.sum(), 1), scored


def loss(apply_fn, params, tokens, rng, cfg, mask_id: int):
    del mask_id
    valid = common.random_length_valid(rng, tokens.shape, cfg.random_length_prob,
                                       cfg.random_length_buckets)
    out, aux = apply_fn(params, tokens, valid)      # logits, or common.Hidden (the loss makes the logits)
    # every position scored against the next token (the last one's target wraps and is dropped), so
    # the chunked head sees whole chunks
    ce, hits = common.ce_and_hits(out, jnp.roll(tokens, -1, axis=1))
    value, scored = shifted_mean(ce[:, :-1], valid)
    correct = hits[:, :-1] & scored
    metrics = dict(ar_loss=value, objective_loss=value, real_tokens=valid.sum(),
                   next_token_accuracy=correct.sum() / jnp.maximum(scored.sum(), 1))
    return value + aux.get("aux_loss", 0.0), {**metrics, **aux}
