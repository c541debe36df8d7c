"""Building blocks: RMSNorm, RoPE, attention with QK-norm, SwiGLU. No biases anywhere.

Every parameter carries logical axis names (embed, mlp, heads, kv, vocab, norm); the rules in
openmoe2_jax/parallel/sharding.py map them to mesh axes. Parameters are stored in `param_dtype`,
computed in `dtype`; norms and softmax run in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def normal_init(std: float):
    return nn.initializers.normal(stddev=std)


def param_with_axes(module: nn.Module, name: str, init, shape, axes, dtype):
    """A parameter whose logical axis names travel with it (for sharding)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """y = x / rms(x) * scale, over the last axis, in float32."""
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],),
                                (self.axis_name,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rope(x, positions, theta: float):
    """Rotary position embedding (rotate-half form).

    Args:
      x: [batch, seq, heads, head_dim] (head_dim even).
      positions: [batch, seq] int.
    """
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)            # [half]
    angle = positions[..., None].astype(jnp.float32) * freq                    # [b, s, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]    # [b, s, 1, half]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with per-head QK RMSNorm and RoPE.

    `causal` selects the AR mask; `valid` [batch, seq] marks real tokens (padding keys are ignored).
    """
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    qk_norm: bool
    norm_eps: float
    init_std: float
    out_std: float
    causal: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, valid=None):
        d = x.shape[-1]
        h, kvh, hd = self.num_heads, self.num_kv_heads, self.head_dim
        init = normal_init(self.init_std)
        wq = param_with_axes(self, "wq", init, (d, h, hd), ("embed", "heads", "kv"), self.param_dtype)
        wk = param_with_axes(self, "wk", init, (d, kvh, hd), ("embed", "heads", "kv"), self.param_dtype)
        wv = param_with_axes(self, "wv", init, (d, kvh, hd), ("embed", "heads", "kv"), self.param_dtype)
        wo = param_with_axes(self, "wo", normal_init(self.out_std), (h, hd, d), ("heads", "kv", "embed"),
                             self.param_dtype)
        x = x.astype(self.dtype)
        q = jnp.einsum("bsd,dhk->bshk", x, wq.astype(self.dtype))   # [b, s, h, hd]
        k = jnp.einsum("bsd,dhk->bshk", x, wk.astype(self.dtype))   # [b, s, kvh, hd]
        v = jnp.einsum("bsd,dhk->bshk", x, wv.astype(self.dtype))
        if self.qk_norm:
            q = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name="q_norm")(q)
            k = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name="k_norm")(k)
        q = rope(q, positions, self.rope_theta)
        k = rope(k, positions, self.rope_theta)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
        mask = None
        if valid is not None:
            mask = valid[:, None, None, :]                            # [b, 1, 1, s_kv]: keys that exist
        # Softmax runs in float32 inside dot_product_attention for bf16 inputs on the XLA path.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal,
                                           implementation="xla")  # [b, s, h, hd]
        out = jnp.einsum("bshk,hkd->bsd", out, wo.astype(self.dtype))
        return nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))


class SwiGLU(nn.Module):
    """FFN(x) = (silu(x W_gate) * (x W_up)) W_down."""
    hidden: int
    init_std: float
    out_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        init = normal_init(self.init_std)
        w_gate = param_with_axes(self, "w_gate", init, (d, self.hidden), ("embed", "mlp"), self.param_dtype)
        w_up = param_with_axes(self, "w_up", init, (d, self.hidden), ("embed", "mlp"), self.param_dtype)
        w_down = param_with_axes(self, "w_down", normal_init(self.out_std), (self.hidden, d),
                                 ("mlp", "embed"), self.param_dtype)
        x = x.astype(self.dtype)
        gate = jnp.einsum("bsd,df->bsf", x, w_gate.astype(self.dtype))
        up = jnp.einsum("bsd,df->bsf", x, w_up.astype(self.dtype))
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up,
                                            ("activation_batch", "activation_length", "activation_mlp"))
        return jnp.einsum("bsf,fd->bsd", hidden, w_down.astype(self.dtype))
