"""Config transformations shared by the ablations: expert granularity, FLOPs-/parameter-matched dense."""
from __future__ import annotations

from openmoe2_jax.configs import resolve
from openmoe2_jax.errors import ConfigError


def with_granularity(config, num_experts: int):
    """The variant of an MoE config with `num_experts` routed experts at constant total and active
    parameters (docs/science.md §2, ablation 6): f' = f E / E' and k' = k E' / E, the shared width unchanged.

    Token choice needs k' to be a whole number. Expert choice uses k only through its capacity
    C = N k cf / E, so it keeps top_k and scales the capacity factor instead (cf' = cf E' / E): the
    experts-per-token average k cf grows with E' exactly, with no rounding. Refuses f E / E' that is
    not a whole number (the comparison must be exact).
    """
    moe = config.moe
    E, f, k = moe.num_experts, moe.expert_mlp_dim, moe.top_k
    if (f * E) % num_experts:
        raise ConfigError(
            f"granularity {E} -> {num_experts} experts: expert_mlp_dim {f} x {E} / {num_experts} must be "
            "a whole number to keep total and active parameters exactly constant.")
    out = config.copy_and_resolve_references()
    out.moe.update(num_experts=num_experts, expert_mlp_dim=f * E // num_experts,
                   shared_mlp_dim=resolve.shared_mlp_dim(moe))
    if moe.routing == "ec":
        out.moe.ec_capacity_factor = moe.ec_capacity_factor * num_experts / E
    else:
        if (k * num_experts) % E:
            raise ConfigError(f"granularity {E} -> {num_experts} experts with token choice: top_k {k} x "
                              f"{num_experts} / {E} must be a whole number.")
        out.moe.top_k = k * num_experts // E
        if out.moe.top_k > num_experts:
            raise ConfigError(f"granularity {E} -> {num_experts}: top_k would be {out.moe.top_k} > "
                              f"{num_experts}.")
    return out
