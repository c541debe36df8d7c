"""The OpenMoE 2 ablations (docs/science.md §4), one file per section; every variant is an experiment ID.

Each file is data: SECTION, TITLE, VARIANTS (name -> function of the scaled default config),
optionally DEPENDS (variant -> the variant whose workdir it needs) and COMPARED (the variants of the
table), and `get_config(arg)` with arg "variant,scale" (default "ec,cpu"), so any file works as
`--config=configs/ablations/sec03_routing.py:tc,cpu`. What the study published for each
section, and how measured results are checked against it, is in experiments/claims.py.
"""
from __future__ import annotations

from openmoe2_jax.configs import scales


def build(variants: dict, arg: str | None, default_variant: str):
    """The config of variant[,scale] from `arg` (e.g. "tc,cpu")."""
    parts = (arg or "").split(",") if arg else []
    variant = parts[0] if parts and parts[0] else default_variant
    scale = parts[1] if len(parts) > 1 and parts[1] else "cpu"
    if variant not in variants:
        raise ValueError(f"variant {variant!r}: expected one of {sorted(variants)}")
    return variants[variant](scales.get(scale))


def ec(c):
    """The study's default: EC batch-level diffusion MoE."""
    return c


def tc(c):
    c.moe.routing = "tc"
    return c
