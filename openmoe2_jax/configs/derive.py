"""Config transformations shared by the ablations: expert granularity, FLOPs-/parameter-matched dense."""
from __future__ import annotations

from openmoe2_jax.validation import ConfigError


def with_granularity(config, num_experts: int):
    """The variant of an MoE config with `num_experts` routed experts at constant total and active
    parameters (SCIENCE.md §2, ablation 6): f' = f E / E', k' = k E' / E, the shared width unchanged.

    Refuses ratios that do not give whole numbers (no rounding: the comparison must be exact).
    """
    moe = config.moe
    E, f, k = moe.num_experts, moe.expert_mlp_dim, moe.top_k
    if (f * E) % num_experts or (k * num_experts) % E:
        raise ConfigError(
            f"granularity {E} -> {num_experts} experts: expert_mlp_dim {f} x {E} / {num_experts} and "
            f"top_k {k} x {num_experts} / {E} must both be whole numbers to keep total and active "
            "parameters exactly constant.")
    new_k = k * num_experts // E
    if new_k > num_experts:
        raise ConfigError(f"granularity {E} -> {num_experts}: top_k would be {new_k} > {num_experts}.")
    out = config.copy_and_resolve_references()
    shared = moe.shared_mlp_dim or moe.num_shared_experts * f
    out.moe.update(num_experts=num_experts, expert_mlp_dim=f * E // num_experts, top_k=new_k,
                   shared_mlp_dim=shared if moe.num_shared_experts else 0)
    return out
