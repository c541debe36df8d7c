"""The OpenMoE 2 ablations (docs/science.md §4), one file per section; every variant is an experiment ID.

Each file defines SECTION, TITLE, QUESTION, PUBLISHED, VARIANTS (name -> function of the scaled
default config), optionally DEPENDS (variant -> the variant whose workdir it needs) and COMPARED
(the variants of the table), `direction` (results -> (outcome, reason), the outcome one of
experiments.stats.OUTCOMES: the published claim checked part by part with `lower` / `same` / `no_gain`
on the per-seed values of every variant), and `get_config(arg)` with arg "variant,scale" (default
"ec,cpu"), so any file works as `--config=openmoe2_jax/configs/ablations/sec03_routing.py:tc,cpu`.
"""
from __future__ import annotations

import math

from openmoe2_jax.configs import scales
from openmoe2_jax.experiments import stats


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


def values(results, variant: str, metric: str = "validation_loss") -> list[float]:
    """The per-seed values of `metric` of `variant` (a single number counts as one seed)."""
    try:
        v = results[variant][metric]
    except KeyError:
        raise ValueError(f"results[{variant!r}][{metric!r}]: missing; expected the per-seed values of "
                         f"every variant of the section, got variants {sorted(results)}") from None
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _part(claim, results, a: str, b: str, metric: str, label: str) -> tuple[str, str]:
    va, vb = values(results, a, metric), values(results, b, metric)
    missing = [v for v, xs in ((a, va), (b, vb)) if not all(math.isfinite(x) for x in xs)]
    if missing:
        return stats.NO_DIFFERENCE, f"{label}: not measured (no {metric} of {', '.join(missing)})"
    outcome, reason = claim(va, vb, a, b)
    return outcome, f"{label}: {reason}"


def lower(results, a: str, b: str, metric: str = "validation_loss", claim: str = "") -> tuple[str, str]:
    """Part of a claim: `a`'s mean `metric` is below `b`'s (a claimed difference)."""
    return _part(stats.claim_lower, results, a, b, metric, claim or f"{a} below {b}")


def same(results, a: str, b: str, metric: str = "validation_loss") -> tuple[str, str]:
    """Part of a claim: no difference between `a` and `b`."""
    return _part(stats.claim_same, results, a, b, metric, f"{a} same as {b}")


def no_gain(results, a: str, b: str, metric: str = "validation_loss") -> tuple[str, str]:
    """Part of a claim: `a` (a change to `b`) is not below `b`."""
    return _part(stats.claim_no_gain, results, a, b, metric, f"{a} not below {b}")
