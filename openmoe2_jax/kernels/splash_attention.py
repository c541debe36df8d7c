"""Splash attention for the model: the Pallas TPU kernel that ships with JAX
(`jax.experimental.pallas.ops.tpu.splash_attention`), fitted to the model's attention.

Splash is FlashAttention for TPU with block-sparse masks: it never materialises the [s, s] scores,
neither in the forward nor in the backward, and skips the blocks a causal mask empties. Here:

- bidirectional attention (masked diffusion) is the full mask, AR the causal mask;
- padding (random-length rows; `valid` [b, s] marks real tokens) is segment ids: real tokens are
  segment 1, padding segment 0, and a query attends only keys of its own segment, so no real
  token attends padding. (A padding query attends the other padding keys, where the XLA path lets
  it attend the real ones: padding outputs differ and are never read.)
- q is scaled by 1/sqrt(head_dim) before the kernel (splash does not scale); grouped-query k/v heads
  arrive repeated to the query heads (layers.dot_product_attention does it for every path);
- one kernel per example (`jax.vmap` over the batch), block sizes the largest of 512/256/128
  dividing the sequence; the kernel needs whole 128-token blocks, so a sequence of another length
  (a sampling canvas, an evaluation row) is padded up to one with padding segments and cut back.

`interpret=True` runs the same kernel through the Pallas interpreter on any backend (tests on the
CPU); on TPU the kernel lowers to Mosaic. The reference this must equal is
`models/layers.dot_product_attention` with impl "xla" (tests/test_attention.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib


BLOCK = 128  # the kernel's blocks are whole multiples of this (TPU lanes; also checked when interpreted)


def block_size(seq: int) -> int:
    """The q and kv block for a sequence of `seq` (a multiple of BLOCK): the largest of 512, 256, 128
    that divides it."""
    return next(b for b in (512, 256, 128) if seq % b == 0)


def attention(q, k, v, valid, causal: bool, interpret: bool = False):
    """q, k, v [b, s, h, hd]; valid [b, s] bool -> [b, s, h, hd]."""
    b, s, h, hd = q.shape
    if s % BLOCK:  # pad to whole blocks: the pad is segment 0, which no real token attends
        pad = -s % BLOCK
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        return attention(q, k, v, jnp.pad(valid, ((0, 0), (0, pad))), causal, interpret)[:, :s]
    blk = block_size(s)
    sizes = kernel_lib.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                                  block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    mask = mask_lib.CausalMask((s, s)) if causal else mask_lib.FullMask((s, s))
    splash = kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([mask] * h), block_sizes=sizes,
                                        head_shards=1, q_seq_shards=1, interpret=interpret)
    segments = valid.astype(jnp.int32)
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)                                  # [b, h, s, hd]
    out = jax.vmap(splash)(heads_major(q * jnp.asarray(hd ** -0.5, q.dtype)), heads_major(k),
                           heads_major(v), kernel_lib.SegmentIds(q=segments, kv=segments))
    return jnp.swapaxes(out, 1, 2)
