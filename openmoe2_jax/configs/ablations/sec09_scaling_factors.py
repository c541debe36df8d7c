"""Section 9: gate scaling factors (the Monte Carlo rule of docs/science.md §2) for TC and EC."""
from openmoe2_jax.configs.ablations import build, ec, lower, no_gain, tc
from openmoe2_jax.experiments.stats import combine

SECTION = 9
TITLE = "scaling factors"
QUESTION = "Does scaling the gates so the routed output matches the shared experts' norm help?"
PUBLISHED = "TC: no gain; EC: lower train and val loss"


def _scaled(c):
    c.moe.scaling_factors = True
    return c


VARIANTS = {"tc": tc, "tc_scalingfactor": lambda c: _scaled(tc(c)), "ec": ec,
            "ec_scalingfactor": _scaled}


def direction(r):
    """TC: scaled gates give no gain; EC: scaled gates lower the validation loss."""
    return combine([no_gain(r, "tc_scalingfactor", "tc"), lower(r, "ec_scalingfactor", "ec")])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
