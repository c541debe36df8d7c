"""Section 9: gate scaling factors (the Monte Carlo rule of SCIENCE.md §2) for TC and EC."""
from openmoe2_jax.configs.ablations import build, ec, loss, tc

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
    ok = loss(r, "tc_scalingfactor") >= loss(r, "tc") * 0.995 and loss(r, "ec_scalingfactor") < loss(r, "ec")
    return ok, "TC: scaled not better (0.5% band); EC: scaled below unscaled"


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
