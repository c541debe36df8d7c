"""The OpenMoE 2 ablations (SCIENCE.md §4), one file per section; every variant is an experiment ID.

Each file defines SECTION, TITLE, QUESTION, PUBLISHED, VARIANTS (name -> function of the scaled
default config), optionally DEPENDS (variant -> the variant whose workdir it needs), `direction`
(results -> (agrees: bool, why)), and `get_config(arg)` with arg "variant,scale" (default "ec,tiny"),
so any file works as `--config=openmoe2_jax/configs/ablations/sec03_routing.py:tc,tiny`.
"""
from __future__ import annotations

from openmoe2_jax.configs import scales


def build(variants: dict, arg: str | None, default_variant: str):
    """The config of variant[,scale] from `arg` (e.g. "tc,tiny")."""
    parts = (arg or "").split(",") if arg else []
    variant = parts[0] if parts and parts[0] else default_variant
    scale = parts[1] if len(parts) > 1 and parts[1] else "tiny"
    if variant not in variants:
        raise ValueError(f"variant {variant!r}: expected one of {sorted(variants)}")
    return variants[variant](scales.get(scale))


def ec(c):
    """The study's default: EC batch-level diffusion MoE."""
    return c


def tc(c):
    c.moe.routing = "tc"
    return c


def loss(results, variant):
    return results[variant]["validation_loss"]


def close(a: float, b: float, rel: float = 0.01) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))
