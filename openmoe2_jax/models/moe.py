"""The MoE FFN: fp32 router -> routed SwiGLU experts (stacked weights, logical axis `exp`) + shared
experts -> sum. Routing decisions come from `routing.py`; this module only dispatches and combines.

Dispatch and expert parallelism. Tokens [B, S, d] are regrouped into G routing groups [G, N, d]
of N consecutive tokens of the flattened batch (batch-level routing: N = config.moe.group_tokens, by
default the tokens one data-parallel replica holds, as in the original; sequence-level EC: N = S).
When every group lies on one batch shard (G a multiple of the batch shards), routing runs where the
group lives (groups sharded over data x fsdp x expert). Dispatch gathers each expert's C tokens into
[G, E, C, d] locally, then a sharding constraint moves the expert axis onto the mesh axis `expert`
(groups stay on data x fsdp): XLA turns that reshard into one all-to-all over `expert`. Each device runs
its experts on [G/(data*fsdp), E/expert, C, d] with its shard of the expert weights [E/expert, d, f]; a
second constraint sends results back (the reverse all-to-all) and a local scatter-add combines them.

A group may span several batch shards (`MoEConfig.group_spans_shards`; up to the whole global batch,
exact batch-level EC over every token of the step). Then the group axis is left to XLA and the slots
are laid out [G, E over `expert`, C over data x fsdp, d]: choosing an expert's top C of N tokens needs
the group's router scores from every shard it spans (an all-gather of [N, E] float32 per layer), the
dispatch gathers the chosen tokens' activations from those shards, and the combine sums each token's
expert outputs back across them (a reduce-scatter of [N, d]) -- collectives over the group's shards
instead of one all-to-all over `expert`.

We use sharding constraints rather than shard_map so the same code runs unchanged on any mesh,
including one device.

Dropless token choice sorts all assignments by expert and runs a grouped matmul: `jax.lax.ragged_dot`
on TPU (`moe.tc_dropless_impl = ragged`), which XLA lowers natively there; elsewhere (`blocked`) each
expert's rows are padded to a multiple of BLOCK rows and every block multiplies its expert's weights,
because XLA:CPU lowers ragged_dot to a product of every row with every expert (E times the FLOPs and
temporaries: 48 GiB for the `small` scale's step). Both are exact; the sort is global, so with expert
parallelism at scale use token choice with a capacity factor (the same slot layout and all-to-all as EC).

Auxiliary losses (router z-loss, TC load balance, EC token-wise balance) and routing statistics are
sown into the `moe_losses` and `moe_stats` collections; the objective adds the losses to the loss.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from openmoe2_jax.models import layers, routing


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """A resolved config.moe (static: hashable, no -1/0 placeholders left)."""
    num_experts: int
    num_shared: int
    expert_mlp_dim: int
    shared_mlp_dim: int           # fused shared-expert width (0 when num_shared = 0)
    shared_gating: str            # none | router
    top_k: int
    routing: str                  # ec | tc
    ec_group: str                 # batch | sequence
    num_groups: int               # batch-level routing groups per forward pass (of group_tokens each)
    ec_capacity_factor: float
    tc_capacity_factor: float     # 0 = dropless
    gate: str                     # the gate function: softmax | sigmoid | pre_softmax
    z_loss_coef: float            # router z-loss coefficient
    tc_balance_loss: float
    ec_balance_loss: float
    scaling: tuple | float | None  # EC: table indexed by n_t; TC: a constant; None = off
    topk_impl: str
    tc_dropless_impl: str = "auto"  # ragged | blocked | auto (ragged on TPU, blocked elsewhere)
    group_spans_shards: bool = False  # a batch-level group's tokens lie on several batch shards

    @property
    def spanning(self) -> bool:
        """Routing groups span batch shards (batch-level groups only: a sequence-level EC group is a
        row, which never leaves its shard)."""
        return self.group_spans_shards and not (self.routing == "ec" and self.ec_group == "sequence")


BLOCK = 64  # rows per block of the blocked grouped matmul


def grouped_rows(group_sizes, num_rows: int, block: int = BLOCK):
    """The blocked layout of `num_rows` rows sorted into len(group_sizes) consecutive groups.

    Each group is padded to a multiple of `block` rows. Returns (dest [num_rows]: each row's position
    in the padded layout, block_group [num_blocks]: the group of each block), with the static bound
    num_blocks = ceil(num_rows / block) + groups (blocks past the last group hold only zeros).
    """
    groups = group_sizes.shape[0]
    num_blocks = -(-num_rows // block) + groups
    padded = (group_sizes + block - 1) // block * block                       # [E]
    padded_end = jnp.cumsum(padded)
    end = jnp.cumsum(group_sizes)
    row = jnp.arange(num_rows)
    group = jnp.searchsorted(end, row, side="right")                           # [A]
    dest = (padded_end - padded)[group] + row - (end - group_sizes)[group]     # [A], distinct
    block_group = jnp.searchsorted(padded_end, jnp.arange(num_blocks) * block, side="right")
    return dest, jnp.minimum(block_group, groups - 1)


def blocked_swiglu(x_sorted, group_sizes, w_gate, w_up, w_down, block: int = BLOCK):
    """Per-group SwiGLU of rows sorted by group: x [A, d], group_sizes [E] (sum = A), weights [E, ...]
    -> [A, d]. Each block of `block` rows multiplies its group's weights: FLOPs <= (A + E block) / A
    times the exact count, memory linear in A."""
    A, d = x_sorted.shape
    dest, block_group = grouped_rows(group_sizes, A, block)
    num_blocks = block_group.shape[0]
    xb = jnp.zeros((num_blocks * block, d), x_sorted.dtype).at[dest].set(
        x_sorted, unique_indices=True).reshape(num_blocks, block, d)           # [nb, block, d]
    gate = jnp.einsum("nbd,ndf->nbf", xb, w_gate[block_group])
    up = jnp.einsum("nbd,ndf->nbf", xb, w_up[block_group])
    out = jnp.einsum("nbf,nfd->nbd", jax.nn.silu(gate) * up, w_down[block_group])
    return out.reshape(num_blocks * block, d)[dest]


class MoEFFN(nn.Module):
    """x [B, S, d] -> [B, S, d]."""
    cfg: MoEConfig
    init_std: float
    out_std: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _expert_weights(self, d):
        """Stacked routed-expert SwiGLU weights: gate/up [E, d, f], down [E, f, d]."""
        c = self.cfg
        init = layers.normal_init(self.init_std)
        shape_in, shape_out = (c.num_experts, d, c.expert_mlp_dim), (c.num_experts, c.expert_mlp_dim, d)
        axes_in, axes_out = ("exp", "embed", "mlp"), ("exp", "mlp", "embed")
        w_gate = layers.param_with_axes(self, "w_gate", init, shape_in, axes_in, self.param_dtype)
        w_up = layers.param_with_axes(self, "w_up", init, shape_in, axes_in, self.param_dtype)
        w_down = layers.param_with_axes(self, "w_down", layers.normal_init(self.out_std), shape_out,
                                        axes_out, self.param_dtype)
        return w_gate.astype(self.dtype), w_up.astype(self.dtype), w_down.astype(self.dtype)

    def _experts(self, x):
        """Routed experts on slot layout x [G, E, C, d] -> [G, E, C, d]."""
        w_gate, w_up, w_down = self._expert_weights(x.shape[-1])
        gate = jnp.einsum("gecd,edf->gecf", x, w_gate)
        up = jnp.einsum("gecd,edf->gecf", x, w_up)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * up, self._slot_axes("activation_mlp"))
        return jnp.einsum("gecf,efd->gecd", h, w_down)

    def _experts_grouped(self, x_sorted, group_sizes):
        """Routed experts on assignments sorted by expert: [A, d] -> [A, d] (grouped matmul)."""
        w_gate, w_up, w_down = self._expert_weights(x_sorted.shape[-1])
        impl = self.cfg.tc_dropless_impl
        if impl == "blocked" or (impl == "auto" and jax.default_backend() != "tpu"):
            return blocked_swiglu(x_sorted, group_sizes, w_gate, w_up, w_down)
        gate = jax.lax.ragged_dot(x_sorted, w_gate, group_sizes)
        up = jax.lax.ragged_dot(x_sorted, w_up, group_sizes)
        return jax.lax.ragged_dot(jax.nn.silu(gate) * up, w_down, group_sizes)

    @nn.compact
    def __call__(self, x, valid=None):
        c = self.cfg
        B, S, d = x.shape
        G = B if (c.routing == "ec" and c.ec_group == "sequence") else c.num_groups
        N = B * S // G
        x = x.astype(self.dtype)
        xg = x.reshape(G, N, d)
        if not self.cfg.spanning:      # each group on one batch shard; else XLA keeps x's layout
            xg = nn.with_logical_constraint(xg, ("activation_batch", None, "activation_embed"))
        selectable = None if valid is None else valid.reshape(G, N)

        n_router = c.num_experts + (c.num_shared if c.shared_gating == "router" else 0)
        w_router = layers.param_with_axes(self, "router", layers.normal_init(self.init_std),
                                          (d, n_router), ("embed", None), self.param_dtype)
        logits = jnp.einsum("gnd,de->gne", xg.astype(jnp.float32), w_router.astype(jnp.float32))
        plan, shared_gate = routing.route(c, logits, selectable)
        if isinstance(plan, routing.SlotPlan):      # EC, TC with a capacity
            y = self._dispatch_combine(xg, plan)
        else:                                       # dropless TC
            y = self._dropless(xg.reshape(G * N, d), plan.expert.reshape(G * N, -1),
                               plan.gate.reshape(G * N, -1)).reshape(G, N, d)
        y = y + self._shared(xg, shared_gate)
        for k, v in {**plan.stats, **plan.losses}.items():
            self.sow("moe_stats", k, v)
        for k, v in plan.losses.items():
            self.sow("moe_losses", k, v)
        return y.reshape(B, S, d)

    def _slot_axes(self, last: str) -> tuple:
        """Logical axes of the slot layout [G, E, C, last]: experts over `expert`, and groups over the
        rest of the batch shards -- or, when a group spans shards, its slots (C) over them."""
        if self.cfg.spanning:
            return (None, "activation_exp", "activation_group", last)
        return ("activation_group", "activation_exp", None, last)

    def _dispatch_combine(self, xg, plan: routing.SlotPlan):
        """Gather slots, run experts (expert-parallel), scatter-add gated outputs back to tokens."""
        G, N, d = xg.shape
        slots = jax.vmap(lambda x, t: x[t])(xg, plan.token)                        # [G, E, C, d]
        if not self.cfg.spanning:      # gathered where the group lives, then one all-to-all over `expert`
            slots = nn.with_logical_constraint(slots, ("activation_batch", None, None, "activation_embed"))
        slots = nn.with_logical_constraint(slots, self._slot_axes("activation_embed"))
        out = self._experts(slots)
        out = out * jnp.where(plan.used, plan.gate, 0.0)[..., None].astype(out.dtype)
        out = nn.with_logical_constraint(out, self._slot_axes("activation_embed"))
        if not self.cfg.spanning:
            out = nn.with_logical_constraint(out, ("activation_batch", None, None, "activation_embed"))
        combine = lambda t, o: jnp.zeros((N, d), o.dtype).at[t.reshape(-1)].add(o.reshape(-1, d))
        return jax.vmap(combine)(plan.token, out)                                    # [G, N, d]

    def _dropless(self, x, expert, gate):
        """x [T, d], expert/gate [T, k] -> [T, d], every assignment computed (sort + ragged_dot)."""
        T, k = expert.shape
        flat = expert.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        token = order // k
        sizes = jnp.bincount(flat, length=self.cfg.num_experts).astype(jnp.int32)
        out = self._experts_grouped(x[token], sizes)                                  # [T k, d]
        out = out * gate.reshape(-1)[order][:, None].astype(out.dtype)
        return jnp.zeros_like(x).at[token].add(out)

    def _shared(self, xg, shared_gate):
        """Shared experts: fused SwiGLU added with weight 1, or per-expert MLPs weighted by gates."""
        c = self.cfg
        if c.num_shared == 0:
            return jnp.zeros_like(xg)
        if c.shared_gating == "none":
            return layers.SwiGLU(c.shared_mlp_dim, self.init_std, self.out_std, self.dtype,
                                 self.param_dtype, name="shared")(xg)
        d, f = xg.shape[-1], c.shared_mlp_dim // c.num_shared
        init = layers.normal_init(self.init_std)
        w_gate = layers.param_with_axes(self, "shared_w_gate", init, (c.num_shared, d, f), (None, "embed", "mlp"), self.param_dtype)
        w_up = layers.param_with_axes(self, "shared_w_up", init, (c.num_shared, d, f), (None, "embed", "mlp"), self.param_dtype)
        w_down = layers.param_with_axes(self, "shared_w_down", layers.normal_init(self.out_std),
                                        (c.num_shared, f, d), (None, "mlp", "embed"), self.param_dtype)
        dt = self.dtype
        h = jax.nn.silu(jnp.einsum("gnd,sdf->gnsf", xg, w_gate.astype(dt))) * jnp.einsum(
            "gnd,sdf->gnsf", xg, w_up.astype(dt))
        out = jnp.einsum("gnsf,sfd->gnsd", h, w_down.astype(dt))
        return jnp.einsum("gnsd,gns->gnd", out, shared_gate.astype(dt))
