"""A TPU plan from a config: memory per chip, FLOPs, expert all-to-all, a step-time lower bound.

  python -m openmoe2_jax.plan --config=configs/base.py --topology=v5p-256 [--mesh=data=1,fsdp=16,expert=8]

Chip figures (per chip; Cloud TPU documentation, cloud.google.com/tpu/docs/<version>):
  v5p  459 TFLOP/s bf16, 95 GiB HBM at 2,765 GB/s, ICI 1,200 GB/s (bidirectional); v5p-N has N/2 chips
  v5e  197 TFLOP/s bf16, 16 GiB HBM at 819 GB/s, ICI 200 GB/s (1,600 Gbps); v5litepod-N has N chips
  v6e  918 TFLOP/s bf16, 32 GiB HBM at 1,640 GB/s, ICI 448 GB/s (3,584 Gbps); v6e-N has N chips
  v4   275 TFLOP/s bf16, 32 GiB HBM at 1,200 GB/s, ICI 300 GB/s (2,400 Gbps); v4-N has N/2 chips
Assumptions (estimates, not measurements):
  - state per chip: fp32 parameters + AdamW moments (12 bytes a parameter) + fp32 gradients (4), each
    parameter divided by the mesh axes its logical axes map to (parallel/sharding.py rules);
  - activations per chip, bf16 (Korthikanti et al. 2022): with remat none, 34 s b d bytes per layer
    kept for the backward (the attention's backward is FlashAttention's: no a s^2 scores are kept,
    models/layers.py), plus one layer's float32 scores and probabilities, 8 a s^2 b bytes, alive
    while that layer runs; with full remat 2 s b d per layer (its input) plus that same transient;
    s b = tokens on the chip, a = heads (both divided by `tensor`); the plan reports both; plus the
    output head's float32 logits and their gradient, 8 s b V bytes, which the head computes for all
    of the chip's tokens at once (at the paper shape the largest single activation), or for one chunk
    of `model.head_chunk` positions of each row at a time;
  - expert all-to-all: 4 per MoE layer and step (dispatch + combine, forward + backward), each moving
    tokens x k cf x d bf16 values, the share (expert - 1) / expert leaving the chip;
  - step time >= max(compute at peak, expert all-to-all over ICI, gradient all-reduce of the parameters
    replicated over data: 2 bytes x 2 (n-1)/n per parameter, bf16, over ICI, FSDP all-gathers of the
    parameters: 3 per step (forward, backward, gradient reduce-scatter), bf16, (f-1)/f of them
    arriving); MFU <= compute / bound. Overlap of these with compute is what the bound assumes.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from openmoe2_jax import flops
from openmoe2_jax.configs import resolve
from openmoe2_jax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float      # FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float   # B/s
    ici_bandwidth: float   # B/s per chip
    cores_per_chip: int    # how the accelerator-type number counts


CHIPS = {
    "v5p": Chip("v5p", 459e12, 95 * 2**30, 2765e9, 1200e9, 2),
    "v5litepod": Chip("v5e", 197e12, 16 * 2**30, 819e9, 200e9, 1),
    "v5e": Chip("v5e", 197e12, 16 * 2**30, 819e9, 200e9, 1),
    "v6e": Chip("v6e", 918e12, 32 * 2**30, 1640e9, 448e9, 1),
    "v4": Chip("v4", 275e12, 32 * 2**30, 1200e9, 300e9, 2),
}


def parse_topology(topology: str) -> tuple[Chip, int]:
    """'v5p-256' -> (v5p, 128 chips)."""
    try:
        kind, number = topology.rsplit("-", 1)
        chip = CHIPS[kind]
        n = int(number)
    except (ValueError, KeyError):
        raise ValueError(f"--topology={topology!r}: expected <type>-<N> with type in {sorted(CHIPS)}") from None
    if n % chip.cores_per_chip:
        raise ValueError(f"--topology={topology!r}: N must be a multiple of {chip.cores_per_chip}")
    return chip, n // chip.cores_per_chip


def param_leaves(config) -> list[tuple[tuple, tuple]]:
    """(shape, logical axis names) of every parameter, from an abstract init (nothing allocated)."""
    from openmoe2_jax.models.transformer import Transformer  # pylint: disable=import-outside-toplevel
    model = Transformer(flops.model_config(config))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return [(leaf.value.shape, leaf.names)
            for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))]


def sharded_param_count(leaves, mesh_shape: dict) -> tuple[int, int]:
    """(total parameters, parameters held by one chip) under the sharding rules."""
    rules = dict(sharding.RULES)
    total = per_chip = 0
    for shape, names in leaves:
        size = math.prod(shape)
        divisor = 1
        for dim, name in zip(shape, names):
            axes = rules.get(name)
            axes = (axes,) if isinstance(axes, str) else (axes or ())
            split = math.prod(mesh_shape.get(a, 1) for a in axes)
            divisor *= split if dim % split == 0 else 1
        total += size
        per_chip += size // divisor
    return total, per_chip


def plan(config, chip: Chip, chips: int, mesh_shape: dict, leaves=None) -> dict:
    m = config.model
    mesh = {a: mesh_shape.get(a, 1) for a in sharding.MESH_AXES}
    if math.prod(mesh.values()) != chips:
        raise ValueError(f"mesh {mesh} has {math.prod(mesh.values())} chips, the topology {chips}")
    total, per_chip = sharded_param_count(leaves or param_leaves(config), mesh)
    state_bytes = per_chip * 16
    batch_shards = mesh["data"] * mesh["fsdp"] * mesh["expert"]
    tokens = resolve.step_tokens(config)
    tokens_chip = tokens / batch_shards
    s, d, L, a = config.data.seq_len, m.d_model, m.num_layers, m.num_heads
    transient = 8 * a * s * tokens_chip / mesh["tensor"]   # one layer's fp32 scores + probabilities
    model_cfg = flops.model_config(config)
    vocab = model_cfg.vocab_size
    held = m.head_chunk / s if m.head_chunk else 1.0        # model.head_chunk: one chunk of positions
    logits = tokens_chip * held * vocab * 4 * 2 / mesh["tensor"]   # the fp32 logits and their gradient
    act_none = L * tokens_chip * d * 34 / mesh["tensor"] + transient + logits
    act_full = L * tokens_chip * d * 2 + transient + logits
    flops_step = flops.train_flops_per_token(model_cfg, s) * tokens
    compute_s = flops_step / (chips * chip.bf16_flops)
    moe_layers = (L - config.moe.first_dense_layers) if m.ffn == "moe" else 0
    k_eff = resolve.experts_per_token(config.moe)
    a2a_bytes_step = 4 * moe_layers * tokens * k_eff * d * 2 * (mesh["expert"] - 1) / mesh["expert"]
    a2a_s = a2a_bytes_step / chips / chip.ici_bandwidth
    replicated = per_chip  # parameters each data replica holds and must all-reduce
    n = mesh["data"]
    allreduce_s = (2 * replicated * 2 * (n - 1) / n) / chip.ici_bandwidth if n > 1 else 0.0
    f = mesh["fsdp"]
    fsdp_s = (3 * 2 * per_chip * f * (f - 1) / f) / chip.ici_bandwidth if f > 1 else 0.0
    bound = max(compute_s, a2a_s, allreduce_s, fsdp_s)
    # Evaluation (runtime/restore.py): the parameters alone, in their own dtype and sharding, plus one
    # forward's largest transients: a layer's scores and the float32 logits of a training-size batch.
    eval_params = per_chip * jnp.dtype(m.param_dtype).itemsize
    eval_act = transient + tokens_chip * vocab * 4 / mesh["tensor"]
    return dict(
        chip=chip.name, chips=chips, mesh=mesh, total_params=total, params_per_chip=per_chip,
        state_bytes_per_chip=state_bytes, activation_bytes_no_remat=act_none,
        activation_bytes_full_remat=act_full, logits_bytes=logits, hbm_bytes=chip.hbm_bytes,
        fits_no_remat=state_bytes + act_none <= chip.hbm_bytes,
        fits_full_remat=state_bytes + act_full <= chip.hbm_bytes,
        flops_per_step=flops_step, compute_seconds=compute_s, all_to_all_bytes_per_step=a2a_bytes_step,
        all_to_all_seconds=a2a_s, allreduce_seconds=allreduce_s, fsdp_allgather_seconds=fsdp_s,
        step_seconds_lower_bound=bound, eval_param_bytes_per_chip=eval_params,
        eval_activation_bytes_per_chip=eval_act,
        mfu_upper_bound=compute_s / bound if bound else 0.0,
    )


def suggest(config, chip: Chip, chips: int) -> dict | None:
    """The (data, fsdp, expert) mesh that fits (full remat) with the lowest step-time bound (ties: the
    least state per chip)."""
    best, leaves = None, param_leaves(config)
    key = lambda p: (p["step_seconds_lower_bound"], p["state_bytes_per_chip"])
    E = config.moe.num_experts if config.model.ffn == "moe" else 1
    for expert in [e for e in range(1, chips + 1) if chips % e == 0 and E % e == 0]:
        rest = chips // expert
        for fsdp in [f for f in range(1, rest + 1) if rest % f == 0]:
            data = rest // fsdp
            if config.train.batch_size % (data * fsdp * expert):
                continue
            p = plan(config, chip, chips, dict(data=data, fsdp=fsdp, expert=expert, tensor=1), leaves)
            if p["fits_full_remat"] and (best is None or key(p) < key(best)):
                best = p
    return best


def report(p: dict) -> str:
    g = 2**30
    return "\n".join([
        f"{p['chips']} x {p['chip']}, mesh {p['mesh']}",
        f"parameters: {p['total_params']:,} total, {p['params_per_chip']:,} per chip",
        f"state per chip (fp32 params + AdamW + grads): {p['state_bytes_per_chip'] / g:.2f} GiB of "
        f"{p['hbm_bytes'] / g:.0f} GiB",
        f"activations per chip: {p['activation_bytes_no_remat'] / g:.2f} GiB (no remat), "
        f"{p['activation_bytes_full_remat'] / g:.2f} GiB (full remat), of which the fp32 logits and "
        f"their gradient {p['logits_bytes'] / g:.2f} GiB",
        f"fits: {'yes' if p['fits_no_remat'] else 'no'} without remat, "
        f"{'yes' if p['fits_full_remat'] else 'no'} with full remat",
        f"FLOPs per step: {p['flops_per_step']:.3e} -> {p['compute_seconds'] * 1e3:.1f} ms at peak",
        f"expert all-to-all per step: {p['all_to_all_bytes_per_step'] / g:.2f} GiB -> "
        f"{p['all_to_all_seconds'] * 1e3:.1f} ms over ICI",
        f"gradient all-reduce: {p['allreduce_seconds'] * 1e3:.1f} ms; FSDP all-gathers: "
        f"{p['fsdp_allgather_seconds'] * 1e3:.1f} ms",
        f"step time >= {p['step_seconds_lower_bound'] * 1e3:.1f} ms; MFU <= {p['mfu_upper_bound']:.0%}",
        f"evaluation per chip (parameters only, sharded the same way): "
        f"{p['eval_param_bytes_per_chip'] / g:.2f} GiB + {p['eval_activation_bytes_per_chip'] / g:.2f} GiB "
        "for a forward of a training-size batch (logits included)",
    ])


def main(argv):
    del argv
    from openmoe2_jax import validation  # pylint: disable=import-outside-toplevel
    config = _CONFIG.value
    validation.validate(config)
    try:
        chip, chips = parse_topology(_TOPOLOGY.value)
        if _MESH.value:
            shape = {k: int(v) for k, v in (kv.split("=") for kv in _MESH.value.split(","))}
            print(report(plan(config, chip, chips, shape)))
            print()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    best = suggest(config, chip, chips)
    print("suggested mesh:" if best else "no (data, fsdp, expert) mesh fits with full remat")
    if best:
        print(report(best))


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=ungrouped-imports
    from openmoe2_jax import cli, configs
    _CONFIG = cli.define_config_file("config", configs.path("base"), "Config file.")
    _TOPOLOGY = flags.DEFINE_string("topology", "v5p-256", "Accelerator type, e.g. v5p-256.")
    _MESH = flags.DEFINE_string("mesh", "", "Optional mesh to evaluate, e.g. data=2,fsdp=8,expert=8.")
    app.run(main, flags_parser=cli.parse_flags)
