"""The decoder stack: embedding -> L x [pre-RMSNorm attention, pre-RMSNorm FFN] -> RMSNorm -> head.

Causal (AR) or bidirectional (masked diffusion) attention; untied input embedding and output head;
init N(0, init_std) with the output projections (attention `wo`, FFN `w_down`) at
init_std / sqrt(2 * num_layers).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from openmoe2_jax.configs import resolve
from openmoe2_jax.errors import ConfigError
from openmoe2_jax.models import layers, routing
from openmoe2_jax.models.moe import MoEConfig, MoEFFN


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's static shape, resolved from a validated config (vocab size and head_dim filled in)."""
    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float
    norm_eps: float
    qk_norm: bool
    init_std: float
    causal: bool
    dtype: str
    param_dtype: str
    moe: MoEConfig | None = None     # None = dense FFN in every layer
    first_dense_layers: int = 0      # with moe: layers [0, N) are dense, of width dense_mlp_dim
    dense_mlp_dim: int = 0
    remat: str = "none"              # none | block | attention (config.model.remat)
    attention_impl: str = "auto"     # config.model.attention_impl (layers.dot_product_attention)
    head_chunk: int = 0              # config.model.head_chunk: training loss's positions per head chunk
    scan_layers: bool = False        # config.model.scan_layers: the identical layers under nn.scan

    @property
    def scan_from(self) -> int:
        """The first layer of the scanned stack (num_layers: none scanned). The first-N dense layers of
        an MoE model stay unrolled."""
        if not self.scan_layers:
            return self.num_layers
        return self.first_dense_layers if self.moe is not None else 0

    def is_moe_layer(self, i: int) -> bool:
        return self.moe is not None and i >= self.first_dense_layers

    @property
    def dense_ffn_width(self) -> int:
        """Width of the dense FFN layers (all layers of a dense model, the first N of an MoE)."""
        return self.dense_mlp_dim if self.moe is not None else self.mlp_dim

    @property
    def out_std(self) -> float:
        return self.init_std / math.sqrt(2 * self.num_layers)

    @classmethod
    def from_config(cls, config, tokenizer_num_ids: int, batch_shards: int = 1) -> "ModelConfig":
        """Resolves `config` (validated). batch_shards: data x fsdp x expert of the mesh, which sets the
        default routing group (one data-parallel replica's tokens) and whether a group spans shards."""
        m = config.model
        vocab = resolve.vocab_size(m, tokenizer_num_ids)
        if vocab < tokenizer_num_ids + 1:  # + the mask id
            raise ConfigError(f"config.model.vocab_size = {vocab} is smaller than the tokenizer's "
                              f"{tokenizer_num_ids} ids + 1 mask id; use 0 to derive it.")
        return cls(vocab_size=vocab, num_layers=m.num_layers, d_model=m.d_model,
                   num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                   head_dim=resolve.head_dim(m), mlp_dim=m.mlp_dim,
                   rope_theta=m.rope_theta, norm_eps=m.norm_eps, qk_norm=m.qk_norm,
                   init_std=m.init_std, causal=config.objective.kind == "ar",
                   dtype=m.dtype, param_dtype=m.param_dtype,
                   moe=resolve_moe(config.moe, resolve.step_tokens(config), batch_shards) if m.ffn == "moe" else None,
                   first_dense_layers=config.moe.first_dense_layers if m.ffn == "moe" else 0,
                   dense_mlp_dim=(config.moe.dense_mlp_dim or m.mlp_dim) if m.ffn == "moe" else m.mlp_dim,
                   remat=m.remat, attention_impl=m.attention_impl, head_chunk=m.head_chunk,
                   scan_layers=m.scan_layers)


def resolve_moe(moe, tokens: int, batch_shards: int) -> MoEConfig:
    """config.moe -> MoEConfig for steps of `tokens` tokens over `batch_shards` batch shards:
    placeholders filled (configs/resolve.py), scaling factors computed (never hard-coded)."""
    scaling = None
    if moe.scaling_factors:
        if moe.routing == "ec":
            scaling = routing.scaling_table_ec(moe.num_experts, moe.num_shared_experts, moe.gate)
        else:
            scaling = routing.scaling_factor_tc(moe.num_experts, moe.num_shared_experts, moe.top_k,
                                                moe.gate)
    groups = tokens // resolve.group_tokens(moe, tokens, batch_shards)
    # (with_groups below sets num_groups and group_spans_shards for another batch by the same rule)
    return MoEConfig(
        num_experts=moe.num_experts, num_shared=moe.num_shared_experts,
        expert_mlp_dim=moe.expert_mlp_dim,
        shared_mlp_dim=resolve.shared_mlp_dim(moe),
        shared_gating=moe.shared_gating, top_k=moe.top_k, routing=moe.routing, ec_group=moe.ec_group,
        num_groups=groups, group_spans_shards=_spans_shards(groups, batch_shards),
        ec_capacity_factor=moe.ec_capacity_factor,
        tc_capacity_factor=moe.tc_capacity_factor, gate=moe.gate, z_loss_coef=moe.z_loss_coef,
        tc_balance_loss=moe.tc_balance_loss if moe.routing == "tc" else 0.0,
        ec_balance_loss=moe.ec_balance_loss if moe.routing == "ec" else 0.0,
        scaling=scaling, topk_impl=moe.topk_impl, tc_dropless_impl=moe.tc_dropless_impl)


def _spans_shards(groups: int, batch_shards: int) -> bool:
    """Whether `groups` routing groups of a batch split over `batch_shards` shards span shards."""
    return groups % batch_shards != 0


def with_groups(model_cfg: ModelConfig, groups: int, batch_shards: int = 1) -> ModelConfig:
    """`model_cfg` routing `groups` batch-level groups per forward pass of a batch split over
    `batch_shards` shards (a dense model: unchanged)."""
    if model_cfg.moe is None:
        return model_cfg
    return dataclasses.replace(model_cfg, moe=dataclasses.replace(
        model_cfg.moe, num_groups=groups, group_spans_shards=_spans_shards(groups, batch_shards)))


class Block(nn.Module):
    cfg: ModelConfig
    index: int

    @nn.compact
    def __call__(self, x, positions, valid):
        c = self.cfg
        dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        h = layers.RMSNorm(c.norm_eps, dt, pdt, name="attn_norm")(x)
        attention = layers.Attention
        if c.remat == "attention":
            # Keep the projections (dots without batch dimensions); recompute scores and softmax.
            attention = nn.remat(attention, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        x = x + attention(c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta, c.qk_norm,
                                 c.norm_eps, c.init_std, c.out_std, c.causal, dt, pdt,
                                 c.attention_impl, name="attn")(h, positions, valid)
        h = layers.RMSNorm(c.norm_eps, dt, pdt, name="ffn_norm")(x)
        if c.is_moe_layer(self.index):
            ffn = MoEFFN(c.moe, c.init_std, c.out_std, dt, pdt, name="moe")(h, valid)
        else:
            ffn = layers.SwiGLU(c.dense_ffn_width, c.init_std, c.out_std, dt, pdt, name="ffn")(h)
        x = x + ffn
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))


class Hidden(flax.struct.PyTreeNode):
    """The model's output before its head (apply_fn with hidden=True): the final hidden states and the
    head's weights, so that a loss (objectives.common) makes only the logits it needs -- `chunk`
    positions at a time, never [b, s, V] at once (model.head_chunk), or only at the positions it scores
    (objective.masked_head)."""
    x: jax.Array                                           # [b, s, d], compute dtype
    head: jax.Array                                        # [d, V], parameter dtype
    chunk: int = flax.struct.field(pytree_node=False)      # positions per chunk (divides s); 0 = all at once


def head_logits(x, head):
    """The output head: x [b, s, d] (compute dtype) @ head [d, V] -> float32 logits [b, s, V]. A 2-D
    matmul in the compute dtype: XLA:CPU runs the backward of the 3-D einsum ~4x slower (measured)."""
    b, s, d = x.shape
    return (x.reshape(-1, d) @ head.astype(x.dtype)).reshape(b, s, head.shape[1]).astype(jnp.float32)


def _block_class(cfg: ModelConfig):
    """Block, or with remat = block Block recomputed in the backward (each layer keeps its input)."""
    return nn.remat(Block) if cfg.remat == "block" else Block


class ScannedBlock(nn.Module):
    """A Block as nn.scan's body: (x, positions, valid) -> (x', None); `index` is the first scanned
    layer's (every scanned layer is of the same kind)."""
    cfg: ModelConfig
    index: int

    @nn.compact
    def __call__(self, x, positions, valid):
        return _block_class(self.cfg)(self.cfg, self.index, name="block")(x, positions, valid), None


class Transformer(nn.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab] float32 (hidden_only: the final hidden
    states [batch, seq, d_model] before the head, whose weights stay params["head"])."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, valid=None, hidden_only: bool = False):
        c = self.cfg
        dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embedding = layers.param_with_axes(self, "embedding", layers.normal_init(c.init_std),
                                           (c.vocab_size, c.d_model), ("vocab", "embed"), pdt)
        x = jnp.take(embedding, tokens, axis=0).astype(dt)          # [b, s, d]
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        block = _block_class(c)
        for i in range(c.scan_from):
            x = block(c, i, name=f"layer_{i}")(x, positions, valid)
        if c.scan_from < c.num_layers:
            # the identical layers as one compiled body: parameters and sown values stacked on a
            # leading `layers` axis (replicated: parallel/sharding.py)
            stack = nn.scan(ScannedBlock, variable_axes={"params": 0, "moe_stats": 0, "moe_losses": 0},
                            split_rngs={"params": True}, in_axes=(nn.broadcast, nn.broadcast),
                            length=c.num_layers - c.scan_from, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(c, c.scan_from, name="layers")(x, positions, valid)
        x = layers.RMSNorm(c.norm_eps, dt, pdt, name="final_norm")(x)
        head = layers.param_with_axes(self, "head", layers.normal_init(c.init_std),
                                      (c.d_model, c.vocab_size), ("embed", "vocab"), pdt)
        if hidden_only:
            return x
        logits = head_logits(x, head)
        return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))


def unstacked(params: dict, scan_from: int) -> dict:
    """The parameters of a model.scan_layers model as the unrolled model's (layer_i for every layer):
    the stacked `layers` tree split along its leading axis. Unrolled parameters pass unchanged."""
    if "layers" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    stack = params["layers"]["block"]
    for i in range(jax.tree.leaves(stack)[0].shape[0]):
        out[f"layer_{scan_from + i}"] = jax.tree.map(lambda a, i=i: a[i], stack)
    return out


def apply_fn(model: nn.Module, hidden: bool = False):
    """(params, tokens, valid) -> (logits, aux); with hidden, (Hidden, aux) instead of logits: the
    training loss then makes the logits itself (Hidden.chunk = config.model.head_chunk).

    The one place that reads what models/moe.py sows: aux["aux_loss"] is the sum of the MoE layers'
    weighted auxiliary losses (z-loss, load balance), the term every objective adds to its loss;
    aux["moe/<layer>/<stat>"] and aux["moe/<stat>"] (mean over MoE layers) are routing statistics.
    """
    def apply(params, tokens, valid):
        logits, sown = model.apply({"params": params}, tokens, valid, hidden,
                                   mutable=["moe_stats", "moe_losses"])
        if hidden:
            logits = Hidden(x=logits, head=params["head"], chunk=model.cfg.head_chunk)
        aux = {}
        losses = jax.tree.leaves(sown.get("moe_losses", {}))    # scanned layers: stacked [layers]
        if losses:
            aux["aux_loss"] = sum(jnp.sum(loss) for loss in losses)
        per_stat = {}
        for layer, stats in sown.get("moe_stats", {}).items():
            if layer == "layers":                                # the scanned stack, one row a layer
                for name, (values,) in stats["block"]["moe"].items():
                    for i, value in enumerate(values):
                        aux[f"moe/layer_{model.cfg.scan_from + i}/{name}"] = value
                        per_stat.setdefault(name, []).append(value)
                continue
            for name, (value,) in stats["moe"].items():
                aux[f"moe/{layer}/{name}"] = value
                per_stat.setdefault(name, []).append(value)
        aux.update({f"moe/{name}": jnp.mean(jnp.stack(v)) for name, v in per_stat.items()})
        return logits, aux
    return apply
