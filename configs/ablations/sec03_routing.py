"""Section 3: token choice vs expert choice at equal active FLOPs."""
from openmoe2_jax.configs.ablations import build, ec, tc

SECTION = 3
TITLE = "token choice vs expert choice"
VARIANTS = {"tc": tc, "ec": ec}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
