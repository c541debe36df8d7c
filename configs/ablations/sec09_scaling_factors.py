"""Section 9: gate scaling factors (the Monte Carlo rule of docs/science.md §2) for TC and EC."""
from openmoe2_jax.configs.ablations import build, ec, tc

SECTION = 9
TITLE = "scaling factors"


def _scaled(c):
    c.moe.scaling_factors = True
    return c


VARIANTS = {"tc": tc, "tc_scalingfactor": lambda c: _scaled(tc(c)), "ec": ec,
            "ec_scalingfactor": _scaled}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
