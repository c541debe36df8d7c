"""Expert-choice top-k: for each expert row of a [..., experts, tokens] score matrix, the top-C tokens.

One entry point, `top_k(scores, k, impl)`, so that the implementation is a config choice
(`config.moe.topk_impl`). `xla` is `jax.lax.top_k` (ties go to the lower token index); it is the
reference every other implementation must equal exactly.
"""
from __future__ import annotations

import jax

IMPLS = ("xla",)


def top_k(scores, k: int, impl: str = "xla"):
    """Top-k along the last axis.

    Args:
      scores: [..., n] float.
      k: 1 <= k <= n.
      impl: one of IMPLS.
    Returns:
      values [..., k] (descending), indices [..., k] int32.
    """
    if impl == "xla":
        return jax.lax.top_k(scores, k)
    raise ValueError(f"config.moe.topk_impl = {impl!r} is not available: expected one of {IMPLS}")
