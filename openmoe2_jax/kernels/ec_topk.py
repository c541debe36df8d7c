"""Expert-choice top-k: for each expert row of a [..., experts, tokens] score matrix, the top-C tokens.

One entry point, `top_k(scores, k, impl)`, so the implementation is a config choice
(`config.moe.topk_impl`):
  xla        `jax.lax.top_k`: the reference every other implementation equals exactly.
  pallas     the Pallas TPU (Mosaic) kernel below.
  interpret  the same kernel body run by the Pallas interpreter (any backend; for tests on CPU).
  auto       pallas on TPU, xla elsewhere.

Order and ties. Values come out descending; equal values in increasing token index (as lax.top_k).
The order is the total order of float bit patterns that XLA's top_k uses: -NaN < -inf < ... < -0 <
+0 < ... < +inf < +NaN. So a NaN score (positive sign) is taken first, like XLA does; bf16 scores are
widened to float32 (order-preserving) and the values returned in the input dtype.

The algorithm (batch-level EC asks for the top C ~ N k / E of N ~ 32k tokens per expert: a top-k with
very large k, which sorting or repeated max extraction handle badly on a TPU):
  0. Keys: float32 bits as int32, flipped so that signed integer order is the total order above.
  1. Kernel A — threshold by bisection on the key bits. One row block [8, N] (N padded to 128) is
     loaded into VMEM once; 32 passes of compare-and-count, one per bit from the most significant,
     build T = the C-th largest key of each row. HBM traffic: the block read once (4 N bytes per row);
     VMEM: 8 x N x 4 bytes for the keys + the same for one temporary (N = 32,768: 2 MiB).
  2. Bookkeeping in XLA (one pass, memory-bound, O(N) per row): per 128-token chunk, the number of keys
     > T and == T; from their exclusive cumulative sums, each chunk's first output slot and how many of
     its ties it takes (ties go to lower indices: the first C - #{key > T} keys equal to T).
  3. Kernel B — compaction in index order. Per row block, per chunk: the chunk's win mask (key > T, or
     key == T within the tie quota), its inclusive prefix count as a [128, 128] lower-triangular matmul
     (exact: 0/1 inputs, f32 accumulation), and for the at most two 128-wide output blocks the chunk's
     winners land in (their offset is a scalar read from SMEM), a compare-and-select writes each
     winner's token index to its slot. Work per row: O(N x 256) compares, independent of C.
     HBM: the keys once more + the [8, C] output; VMEM as in kernel A plus the output block.
     No sort, top_k or cumsum inside a kernel (Mosaic has no TPU lowering for them); block shapes are
     multiples of (8, 128).
  4. XLA: gather the C values at those indices and sort the [E, C] winners by key (stable, so ties
     stay in index order): a sort of C, not N, elements per row.
Gradients: the values are gathered from `scores` at the kernel's indices, so they flow exactly as
through lax.top_k (into the chosen positions, zero elsewhere); the indices carry no gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

IMPLS = ("auto", "xla", "pallas", "interpret")
ROWS = 8        # sublanes: rows of a block
LANES = 128     # lanes: tokens of a chunk
LANE_BITS = 7   # log2(LANES)


def resolve(impl: str) -> str:
    """`auto` -> pallas on TPU, xla elsewhere; any other impl unchanged."""
    if impl == "auto":
        return "pallas" if jax.default_backend() == "tpu" else "xla"
    return impl


def top_k(scores, k: int, impl: str = "xla"):
    """Top-k along the last axis. scores [..., n] float; 1 <= k <= n.

    Returns values [..., k] (descending, input dtype) and indices [..., k] int32.
    """
    impl = resolve(impl)
    if impl == "xla":
        return jax.lax.top_k(scores, k)
    if impl in ("pallas", "interpret"):
        return pallas_top_k(scores, k, interpret=impl == "interpret")
    raise ValueError(f"config.moe.topk_impl = {impl!r} is not available: expected one of {IMPLS}")


def sortable_keys(x):
    """float -> int32 whose signed order is the total order of the float bit patterns."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))


def _threshold_kernel(keys_ref, thr_ref, *, n: int, k: int):
    """thr[r] = the k-th largest key of row r (keys at lanes >= n are padding)."""
    keys = keys_ref[...]                                                        # [8, Np] int32
    valid = jax.lax.broadcasted_iota(jnp.int32, keys.shape, 1) < n

    def bit_step(i, t):
        bit = jnp.left_shift(jnp.int32(1), 31 - i)
        cand = t | bit                           # candidate, as a biased (unsigned) pattern
        cand_signed = cand ^ jnp.int32(-2**31)
        count = jnp.sum((valid & (keys >= cand_signed)).astype(jnp.int32), axis=1, keepdims=True)
        return jnp.where(count >= k, cand, t)

    t = jax.lax.fori_loop(0, 32, bit_step, jnp.zeros((ROWS, 1), jnp.int32))
    thr_ref[...] = jnp.broadcast_to(t ^ jnp.int32(-2**31), thr_ref.shape)


def _compact_kernel(meta_ref, keys_ref, thr_ref, out_ref, *, n: int, num_chunks: int, out_blocks: int):
    """out[r, j] = token index of the (j+1)-th winner of row r, in index order.

    meta (SMEM) [8, 2 * num_chunks + 1]: per chunk, winners before it and ties (key == T) before it;
    last column: the row's tie quota.
    """
    out_ref[...] = jnp.zeros(out_ref.shape, jnp.int32)
    thr = thr_ref[:, 0:1]                                                       # [8, 1]
    sub = jax.lax.broadcasted_iota(jnp.int32, (LANES, LANES), 0)
    lane = jax.lax.broadcasted_iota(jnp.int32, (LANES, LANES), 1)
    lower = (lane <= sub).astype(jnp.float32)                                   # inclusive prefix
    eye = (lane == sub).astype(jnp.float32)
    col_of = jax.lax.broadcasted_iota(jnp.int32, (1, ROWS), 1)
    nt = (((1,), (1,)), ((), ()))                                               # A @ B^T

    def row_vector(column):
        """[1, 8] float vector of meta[r, column] for the 8 rows (SMEM scalars)."""
        v = jnp.zeros((1, ROWS), jnp.float32)
        for r in range(ROWS):
            v = jnp.where(col_of == r, meta_ref[r, column].astype(jnp.float32), v)
        return v

    def chunk(c, carry):
        keys = keys_ref[:, pl.ds(pl.multiple_of(c * LANES, LANES), LANES)]      # [8, 128]
        valid = (jax.lax.broadcasted_iota(jnp.int32, keys.shape, 1) + c * LANES) < n
        gt = (valid & (keys > thr)).astype(jnp.float32)
        eq = (valid & (keys == thr)).astype(jnp.float32)
        gt_t = jax.lax.dot_general(eye, gt, nt, preferred_element_type=jnp.float32)   # [128, 8]
        eq_t = jax.lax.dot_general(eye, eq, nt, preferred_element_type=jnp.float32)
        eq_rank = row_vector(num_chunks + c) + jnp.dot(lower, eq_t, preferred_element_type=jnp.float32)
        win_t = jnp.maximum(gt_t, eq_t * (eq_rank <= row_vector(2 * num_chunks)).astype(jnp.float32))
        slot = row_vector(c) + jnp.dot(lower, win_t, preferred_element_type=jnp.float32)  # 1-based
        token = (jax.lax.broadcasted_iota(jnp.int32, (LANES, 1), 0) + c * LANES)
        for r in range(ROWS):
            before = meta_ref[r, c]
            after = jnp.where(c + 1 < num_chunks, meta_ref[r, jnp.minimum(c + 1, num_chunks - 1)],
                              jnp.int32(2**30))
            first_block = jax.lax.shift_right_logical(before, LANE_BITS)  # // 128 (no sign() on TPU)
            for extra in range(2):
                block = first_block + extra

                @pl.when((block < out_blocks) & (after > before) & (block * LANES < after))
                def _():
                    target = (jax.lax.broadcasted_iota(jnp.int32, (1, LANES), 1) + block * LANES + 1)
                    hit = (slot[:, r:r + 1] == target.astype(jnp.float32)) & (win_t[:, r:r + 1] > 0)
                    contrib = jnp.sum(jnp.where(hit, token, 0), axis=0, keepdims=True)   # [1, 128]
                    start = pl.multiple_of(block * LANES, LANES)
                    out_ref[pl.ds(r, 1), pl.ds(start, LANES)] += contrib
        return carry

    jax.lax.fori_loop(0, num_chunks, chunk, 0)


@functools.partial(jax.jit, static_argnames=("k", "interpret"))
def pallas_top_k(scores, k: int, interpret: bool = False):
    """lax.top_k-equal top-k along the last axis by the kernels above (see the module docstring)."""
    lead, n = scores.shape[:-1], scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top_k: k = {k} must be in [1, {n}]")
    rows = int(np.prod(lead)) if lead else 1
    flat = scores.reshape(rows, n)
    keys = sortable_keys(flat)
    rows_p = -(-rows // ROWS) * ROWS
    n_p = -(-n // LANES) * LANES
    k_p = -(-k // LANES) * LANES
    keys_p = jnp.pad(keys, ((0, rows_p - rows), (0, n_p - n)))
    num_chunks = n_p // LANES
    grid = (rows_p // ROWS,)

    thr = pl.pallas_call(
        functools.partial(_threshold_kernel, n=n, k=k),
        out_shape=jax.ShapeDtypeStruct((rows_p, LANES), jnp.int32),
        grid=grid,
        in_specs=[pl.BlockSpec((ROWS, n_p), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((ROWS, LANES), lambda i: (i, 0)),
        interpret=interpret,
    )(keys_p)

    # Bookkeeping per 128-token chunk (XLA): winners and ties before each chunk, the tie quota.
    t = thr[:, :1]
    valid = jnp.arange(n_p) < n
    chunks = keys_p.reshape(rows_p, num_chunks, LANES)
    valid_c = valid.reshape(num_chunks, LANES)
    gt = jnp.sum((chunks > t[:, :, None]) & valid_c, axis=2, dtype=jnp.int32)          # [R, chunks]
    eq = jnp.sum((chunks == t[:, :, None]) & valid_c, axis=2, dtype=jnp.int32)
    quota = k - gt.sum(1, keepdims=True)                                                # ties taken
    eq_before = jnp.cumsum(eq, axis=1) - eq
    taken = jnp.clip(quota - eq_before, 0, eq)
    win = gt + taken
    win_before = jnp.cumsum(win, axis=1) - win
    meta = jnp.concatenate([win_before, eq_before, quota], axis=1).astype(jnp.int32)

    idx = pl.pallas_call(
        functools.partial(_compact_kernel, n=n, num_chunks=num_chunks, out_blocks=k_p // LANES),
        out_shape=jax.ShapeDtypeStruct((rows_p, k_p), jnp.int32),
        grid=grid,
        in_specs=[pl.BlockSpec((ROWS, 2 * num_chunks + 1), lambda i: (i, 0),
                               memory_space=pltpu.SMEM),
                  pl.BlockSpec((ROWS, n_p), lambda i: (i, 0)),
                  pl.BlockSpec((ROWS, LANES), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((ROWS, k_p), lambda i: (i, 0)),
        interpret=interpret,
    )(meta, keys_p, thr)

    idx = jax.lax.stop_gradient(idx[:rows, :k])                                 # index order
    order_keys = ~jnp.take_along_axis(keys, idx, axis=1)                         # descending
    _, idx = jax.lax.sort((order_keys, idx), dimension=1, num_keys=1, is_stable=True)
    values = jnp.take_along_axis(flat, idx, axis=1)
    return values.reshape(*lead, k), idx.reshape(*lead, k)
