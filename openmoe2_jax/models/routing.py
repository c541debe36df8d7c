"""Routing as small pure functions over router logits (docs/science.md §2). No parameters, no modules.

Shapes: G routing groups of N tokens, E routed experts, C slots per expert, k experts per token.

Expert choice (EC): in each group, expert e takes the C tokens with the largest raw logits in its
column (C = max(floor(N k cf / E), 1)). Every expert processes exactly C tokens (perfect balance, no
auxiliary loss); a token is chosen by n_t in {0..E} experts (adaptive computation). Gates, per token
over the experts that chose it: post-softmax (default), normalised sigmoid, or pre-softmax (softmax over
all experts, unnormalised). A token no expert chose gets gate 0, never NaN. Note that with post-softmax
a token chosen by one expert gets gate exactly 1, so only multi-expert tokens (and the auxiliary
losses) send gradient to the router.

Token choice (TC): each token takes its top-k experts by logit, gates softmax (or normalised sigmoid)
over those k. Dropless (every assignment computed) or with capacity C = ceil(N k cf / E), keeping
first the tokens' first choices, then second choices, each in token order, and dropping the rest.

Both produce a `SlotPlan` (which token fills slot (e, c) and with which gate) that the MoE layer
dispatches by gather and combines by scatter-add: memory O(G E C + G N E), linear in tokens, never
a one-hot [tokens, experts, capacity] tensor. Dropless TC produces a `TokenPlan` instead. `route`
does the whole routing of a layer from its config, auxiliary losses and statistics included.
"""
from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from openmoe2_jax.configs.resolve import ec_capacity, tc_capacity
from openmoe2_jax.kernels import ec_topk
from openmoe2_jax.models import layers


class SlotPlan(flax.struct.PyTreeNode):
    """A dispatch plan in slot layout.

    token: [G, E, C] int32, the group-local index of the token in each expert slot.
    gate: [G, E, C] float32, its combine weight (0 for an unused slot).
    used: [G, E, C] bool, False for slots left empty (TC with capacity).
    experts_per_token: [G, N] int32, n_t.
    losses: the weighted auxiliary losses of this routing (name -> scalar), filled in by `route`.
    stats: routing statistics (name -> scalar), filled in by `route`.
    """
    token: jax.Array
    gate: jax.Array
    used: jax.Array
    experts_per_token: jax.Array
    losses: dict = flax.struct.field(default_factory=dict)
    stats: dict = flax.struct.field(default_factory=dict)


class TokenPlan(flax.struct.PyTreeNode):
    """Dropless token choice: expert [G, N, k] int32 and gate [G, N, k] float32 of every token; every
    assignment is computed (no slots). losses / stats as in SlotPlan."""
    expert: jax.Array
    gate: jax.Array
    losses: dict = flax.struct.field(default_factory=dict)
    stats: dict = flax.struct.field(default_factory=dict)


def route(cfg, logits, selectable=None):
    """The whole routing of one MoE layer: (plan, shared_gate) from router logits.

    cfg: the layer's MoEConfig (models/moe.py). logits: [G, N, E (+ S)] float32, the routed experts'
    logits followed, with shared_gating = router, by the shared experts'. selectable: optional [G, N]
    bool (False = padding). The plan is a SlotPlan (EC; TC with a capacity) or a TokenPlan (dropless
    TC), carrying its weighted auxiliary losses (z-loss, balance losses) and its statistics, so the
    layer only dispatches on the plan's type and records what the plan carries. shared_gate:
    [G, N, S] or None (shared experts added with weight 1).
    """
    c = cfg
    G, N, _ = logits.shape
    routed = logits[..., :c.num_experts]
    shared_logits = logits[..., c.num_experts:] if c.shared_gating == "router" else None
    losses, stats = {}, {}
    if c.routing == "ec":
        capacity = ec_capacity(N, c.num_experts, c.top_k, c.ec_capacity_factor)
        plan, shared_gate = expert_choice(routed, capacity, c.gate, scaling=c.scaling, selectable=selectable,
                                          shared_logits=shared_logits, topk_impl=c.topk_impl,
                                          groups_sharded=not c.spanning)
        if c.ec_balance_loss:
            losses["ec_balance_loss"] = c.ec_balance_loss * ec_token_balance_loss(
                routed, plan.experts_per_token, c.top_k)
        experts_per_token = plan.experts_per_token
    else:
        scale = c.scaling if c.scaling is not None else 1.0
        expert, gate, shared_gate = token_choice(routed, c.top_k, c.gate, scale, shared_logits)
        if c.tc_balance_loss:
            losses["tc_balance_loss"] = c.tc_balance_loss * tc_load_balance_loss(routed, expert, c.num_experts)
        if c.tc_capacity_factor > 0:
            capacity = tc_capacity(N, c.num_experts, c.top_k, c.tc_capacity_factor)
            plan, kept = token_choice_slots(expert, gate, c.num_experts, capacity)
            stats["dropped_fraction"] = 1.0 - kept.mean()
            experts_per_token = plan.experts_per_token
        else:
            plan = TokenPlan(expert=expert, gate=gate)
            stats["dropped_fraction"] = jnp.zeros(())
            experts_per_token = jnp.full((G, N), c.top_k, jnp.int32)
    if c.z_loss_coef:
        losses["z_loss"] = c.z_loss_coef * z_loss(logits)
    n_f = experts_per_token.astype(jnp.float32)
    stats.update(
        experts_per_token_mean=n_f.mean(), experts_per_token_min=n_f.min(),
        experts_per_token_max=n_f.max(), experts_per_token_std=n_f.std(),
        zero_expert_fraction=(experts_per_token == 0).mean(),
        router_entropy=router_entropy(routed),
    )
    if isinstance(plan, SlotPlan):
        per_expert = plan.used.sum(axis=2).astype(jnp.float32)          # [G, E]
        stats.update(tokens_per_expert_min=per_expert.min(), tokens_per_expert_max=per_expert.max())
    return plan.replace(losses=losses, stats=stats), shared_gate


def gates_over_chosen(logits, chosen, kind: str):
    """Per-token gates over the chosen experts. logits [..., X] float32, chosen [..., X] bool.

    softmax: softmax of the logits restricted to the chosen set; sigmoid: sigmoid normalised over it
    (+1e-20); pre_softmax: softmax over all X, kept where chosen. Rows with nothing chosen give 0.
    """
    if kind == "softmax":
        top = jnp.max(jnp.where(chosen, logits, -jnp.inf), axis=-1, keepdims=True)
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        ex = jnp.where(chosen, jnp.exp(logits - top), 0.0)
        total = jnp.sum(ex, axis=-1, keepdims=True)
        return ex / jnp.where(total > 0, total, 1.0)
    if kind == "sigmoid":
        s = jnp.where(chosen, jax.nn.sigmoid(logits), 0.0)
        return s / (jnp.sum(s, axis=-1, keepdims=True) + 1e-20)
    if kind == "pre_softmax":
        return jnp.where(chosen, jax.nn.softmax(logits, axis=-1), 0.0)
    raise ValueError(f"config.moe.gate = {kind!r}: expected softmax, sigmoid or pre_softmax")


def _scatter_chosen(token, num_tokens):
    """[G, E, C] token indices -> [G, N, E] bool (True where expert e chose token n)."""
    G, E, C = token.shape
    chosen = jnp.zeros((G, E, num_tokens), bool)
    g = jnp.arange(G)[:, None, None]
    e = jnp.arange(E)[None, :, None]
    return chosen.at[g, e, token].set(True).transpose(0, 2, 1)


def expert_choice(logits, capacity: int, gate: str = "softmax", scaling=None, selectable=None,
                  shared_logits=None, topk_impl: str = "xla", groups_sharded: bool = True):
    """EC routing of each group.

    Args:
      logits: [G, N, E] float32 router logits of the routed experts.
      capacity: C, tokens each expert takes.
      gate: softmax | sigmoid | pre_softmax.
      scaling: optional [E + 1] table; a token chosen by n experts has its gates scaled by scaling[n].
      selectable: optional [G, N] bool; False tokens (padding) are taken only if nothing else is left.
      shared_logits: optional [G, N, S] logits of shared experts that join the gate normalisation
        (they are always chosen).
      topk_impl: the EC top-k (kernels/ec_topk.py). The Pallas kernel runs per shard of the groups
        under a mesh (groups_sharded: each group on one batch shard; else every device ranks all).
    Returns:
      (SlotPlan, shared_gate [G, N, S] or None).
    """
    G, N, E = logits.shape
    scores = logits if selectable is None else jnp.where(selectable[..., None], logits, -jnp.inf)
    top_k = functools.partial(ec_topk.top_k, k=capacity, impl=topk_impl)
    if ec_topk.resolve(topk_impl) != "xla":
        rows = ("activation_batch" if groups_sharded else None, None, None)
        top_k = layers.per_shard(top_k, (rows,), (rows, rows))
    _, token = top_k(jnp.swapaxes(scores, 1, 2))                                # [G, E, C]
    token = token.astype(jnp.int32)
    chosen = _scatter_chosen(token, N)                                          # [G, N, E]
    n = chosen.sum(-1).astype(jnp.int32)                                        # [G, N]
    if shared_logits is None:
        gates = gates_over_chosen(logits, chosen, gate)
        shared_gate = None
    else:
        all_logits = jnp.concatenate([logits, shared_logits], -1)
        all_chosen = jnp.concatenate([chosen, jnp.ones(shared_logits.shape, bool)], -1)
        all_gates = gates_over_chosen(all_logits, all_chosen, gate)
        gates, shared_gate = all_gates[..., :E], all_gates[..., E:]
    if scaling is not None:
        gates = gates * jnp.asarray(scaling, jnp.float32)[n][..., None]
    slot_gate = jnp.take_along_axis(jnp.swapaxes(gates, 1, 2), token, axis=2)  # [G, E, C]
    plan = SlotPlan(token=token, gate=slot_gate, used=jnp.ones(token.shape, bool), experts_per_token=n)
    return plan, shared_gate


def token_choice(logits, top_k: int, gate: str = "softmax", scale: float = 1.0, shared_logits=None):
    """Top-k experts of each token and their gates.

    logits [..., E] -> (expert [..., k] int32, gate [..., k], shared_gate [..., S] or None). Gates are
    softmax (or normalised sigmoid) over the k chosen logits, joined by the shared experts' logits when
    `shared_logits` is given; `scale` multiplies the routed gates.
    """
    values, expert = jax.lax.top_k(logits, top_k)
    if gate not in ("softmax", "sigmoid"):
        raise ValueError(f"config.moe.gate = {gate!r} is not available for token choice: "
                         "expected softmax or sigmoid")
    if shared_logits is not None:
        values = jnp.concatenate([values, shared_logits], -1)
    g = gates_over_chosen(values, jnp.ones(values.shape, bool), gate)
    shared_gate = g[..., top_k:] if shared_logits is not None else None
    return expert.astype(jnp.int32), g[..., :top_k] * scale, shared_gate


def token_choice_slots(expert, gate, num_experts: int, capacity: int) -> tuple[SlotPlan, jax.Array]:
    """TC with capacity: fill each expert's C slots with first choices, then second, ... in token order.

    expert, gate: [G, N, k]. Returns (SlotPlan, kept [G, N, k] bool).
    """
    G, N, k = expert.shape
    order = jnp.swapaxes(expert, 1, 2).reshape(G, k * N)                      # choice-major priority
    onehot = jax.nn.one_hot(order, num_experts, dtype=jnp.int32)              # [G, kN, E]: linear in N
    position = jnp.take_along_axis(jnp.cumsum(onehot, axis=1), order[..., None], 2)[..., 0] - 1
    kept = position < capacity                                                # [G, kN]
    token_of = jnp.tile(jnp.arange(N, dtype=jnp.int32), k)[None].repeat(G, 0)
    gate_of = jnp.swapaxes(gate, 1, 2).reshape(G, k * N)
    # Dropped assignments write to a dump slot C that is cut off afterwards.
    slot = jnp.where(kept, position, capacity)
    g = jnp.arange(G)[:, None]
    token = jnp.zeros((G, num_experts, capacity + 1), jnp.int32).at[g, order, slot].set(token_of)
    slot_gate = jnp.zeros((G, num_experts, capacity + 1), jnp.float32).at[g, order, slot].set(gate_of)
    used = jnp.zeros((G, num_experts, capacity + 1), bool).at[g, order, slot].set(True)
    kept = jnp.swapaxes(kept.reshape(G, k, N), 1, 2)                          # [G, N, k]
    plan = SlotPlan(token=token[..., :capacity], gate=slot_gate[..., :capacity],
                    used=used[..., :capacity], experts_per_token=kept.sum(-1).astype(jnp.int32))
    return plan, kept


# ----- auxiliary losses (each returns the un-weighted value; the layer multiplies by its coefficient)

def z_loss(logits):
    """mean over tokens of logsumexp_e(z)^2. logits [..., E]."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def tc_load_balance_loss(logits, expert, num_experts: int):
    """Switch/GShard: E/(N^2 k) sum_e (sum_t softmax(z)_te) count_e, averaged over groups.

    logits [G, N, E]; expert [G, N, k] (assignments before any dropping). 1 under uniform routing.
    """
    G, N, k = expert.shape
    probs = jax.nn.softmax(logits, axis=-1).sum(axis=1)                                 # [G, E]
    counts = jax.nn.one_hot(expert, num_experts, dtype=jnp.float32).sum(axis=(1, 2))    # [G, E]
    return jnp.mean(jnp.sum(probs * counts, -1) * num_experts / (N * N * k))


def ec_token_balance_loss(logits, experts_per_token, top_k: int):
    """Token-wise balance for EC: P = softmax over tokens per expert, P_t = sum_e P_te,
    loss = sum_t P_t n_t / (E k) with n_t constant; averaged over groups. 1 under uniform routing."""
    E = logits.shape[-1]
    p_t = jax.nn.softmax(logits, axis=1).sum(-1)                                        # [G, N]
    n_t = jax.lax.stop_gradient(experts_per_token).astype(jnp.float32)
    return jnp.mean(jnp.sum(p_t * n_t, axis=-1) / (E * top_k))


def router_entropy(logits):
    """Mean entropy (nats) of softmax over experts."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.mean(-jnp.sum(jnp.exp(logp) * logp, axis=-1))


# ----- scaling factors (docs/science.md §2, ablation 9), computed from the config by Monte Carlo

def _gate_norms(z, gate: str):
    """||g||_2 of the gates over the columns of z [samples, n] (all chosen)."""
    if gate == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        g = s / (s.sum(-1, keepdims=True) + 1e-20)
    elif gate == "pre_softmax":
        raise ValueError("scaling factors are defined for post-softmax and sigmoid gates only")
    else:
        e = np.exp(z - z.max(-1, keepdims=True))
        g = e / e.sum(-1, keepdims=True)
    return np.linalg.norm(g, axis=-1)


def scaling_factor_tc(num_experts: int, num_shared: int, top_k: int, gate: str = "softmax",
                      samples: int = 20000, seed: int = 0) -> float:
    """s_TC = E[sqrt(n_shared) / ||renorm(top-k(softmax z))||], z ~ N(0, I_E)."""
    z = np.random.default_rng(seed).standard_normal((samples, num_experts))
    top = -np.sort(-z, axis=-1)[:, :top_k]  # renormalised top-k of softmax = softmax of top-k logits
    return float(np.mean(math.sqrt(max(num_shared, 1)) / _gate_norms(top, gate)))


def scaling_table_ec(num_experts: int, num_shared: int, gate: str = "softmax", samples: int = 4000,
                     seed: int = 0) -> tuple[float, ...]:
    """s_EC[n] for n = 0..E: E[sqrt(n_shared) / ||gates over n experts||]; s_EC[0] = 0 (no gates)."""
    rng = np.random.default_rng(seed)
    table = [0.0]
    for n in range(1, num_experts + 1):
        z = rng.standard_normal((samples, n))  # any n of E i.i.d. logits
        table.append(float(np.mean(math.sqrt(max(num_shared, 1)) / _gate_norms(z, gate))))
    return tuple(table)
