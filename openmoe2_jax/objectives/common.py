"""Pieces both objectives share: cross-entropy (from logits, or from the final hidden states and the
head a chunk of positions at a time, or only at the positions a loss scores) and the random-length
padding mask."""
import math

import jax
import jax.numpy as jnp

from openmoe2_jax.models.transformer import Hidden, head_logits


def cross_entropy(logits, targets):
    """Per-position CE in float32. logits [b, s, v], targets [b, s] int -> [b, s].

    (A hand-written backward, (softmax - onehot) x g, measured 2.5x slower forward + backward on
    XLA:CPU at [4096, 100352]: XLA fuses this autodiff form better.)
    """
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]


def is_argmax(logits, targets):
    """[b, s] bool: the target has the largest logit (ties count as hits). A max reduction that XLA
    shares with the cross-entropy's, where a separate argmax would be another full pass."""
    picked = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return picked >= jnp.max(logits, axis=-1)


def ce_and_hits(out, targets):
    """(CE [b, s] float32, target-is-argmax [b, s] bool) of `targets` [b, s] under `out`: logits
    [b, s, V], or Hidden, whose logits are made one chunk of positions at a time inside a
    rematerialised loop (lax.map), so forward and backward hold [b, chunk, V] float32, not [b, s, V]."""
    if not isinstance(out, Hidden):
        return cross_entropy(out, targets), is_argmax(out, targets)
    if not out.chunk:
        logits = head_logits(out.x, out.head)
        return cross_entropy(logits, targets), is_argmax(logits, targets)
    b, s, d = out.x.shape
    n, c = s // out.chunk, out.chunk
    to_chunks = lambda a: jnp.moveaxis(a.reshape(b, n, c, *a.shape[2:]), 1, 0)     # [n, b, c, ...]
    from_chunks = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, s)

    @jax.checkpoint
    def chunk(x, t):
        logits = head_logits(x, out.head)                                  # [b, c, V] float32
        return cross_entropy(logits, t), is_argmax(logits, t)

    ce, hits = jax.lax.map(lambda xt: chunk(*xt), (to_chunks(out.x), to_chunks(targets)))
    return from_chunks(ce), from_chunks(hits)


def masked_head_slots(batch: int, seq: int, fraction: float, chunk: int) -> int:
    """K, the positions `masked_ce_and_hits` makes logits for: fraction x batch x seq, rounded up to a
    whole number of head chunks (chunk > 0), at most batch x seq."""
    k = max(1, math.ceil(fraction * batch * seq))
    if chunk:
        k = math.ceil(k / chunk) * chunk
    return min(k, batch * seq)


def masked_ce_and_hits(out: Hidden, targets, scored, fraction: float):
    """ce_and_hits with the head applied only where `scored` [b, s] bool: the scored positions' hidden
    states are gathered into K = masked_head_slots(...) rows and their logits made there (in chunks of
    out.chunk rows), so the head costs K / (b s) of the full one. A batch with more than K scored
    positions takes ce_and_hits at every position instead (lax.cond: one branch runs), so the values are
    exact whatever the count. Returns CE [b, s] float32 and hits [b, s] bool, exact at the scored
    positions, 0 / False elsewhere."""
    b, s, d = out.x.shape
    k = masked_head_slots(b, s, fraction, out.chunk)
    flat, count = scored.reshape(-1), scored.sum()

    def gathered(out):
        (idx,) = jnp.nonzero(flat, size=k, fill_value=0)                   # [K], the scored positions first
        used = jnp.arange(k) < count
        ce, hits = ce_and_hits(out.replace(x=out.x.reshape(-1, d)[idx][None]), targets.reshape(-1)[idx][None])
        ce = jnp.zeros(b * s, jnp.float32).at[idx].add(jnp.where(used, ce[0], 0.0))
        hits = jnp.zeros(b * s, bool).at[idx].max(used & hits[0])
        return ce.reshape(b, s), hits.reshape(b, s)

    def everywhere(out):
        ce, hits = ce_and_hits(out, targets)
        return jnp.where(scored, ce, 0.0), hits & scored

    return jax.lax.cond(count <= k, gathered, everywhere, out)


def random_length_valid(rng, shape, prob: float, buckets):
    """[b, s] bool: all True, except with probability `prob` the batch is cut to a random bucket length.

    The shape never changes (one compiled program); the cut tokens become padding: they are neither
    attended to nor scored (docs/science.md §1, random length).
    """
    batch, seq = shape
    if prob == 0 or not buckets:
        return jnp.ones(shape, bool)
    r_cut, r_len = jax.random.split(rng)
    lengths = jnp.asarray(tuple(buckets), jnp.int32)
    length = jnp.where(jax.random.bernoulli(r_cut, prob),
                       lengths[jax.random.randint(r_len, (), 0, len(buckets))], seq)
    return jnp.broadcast_to(jnp.arange(seq) < length, (batch, seq))
