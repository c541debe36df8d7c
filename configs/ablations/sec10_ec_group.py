"""Section 10: batch-level vs sequence-level expert choice."""
from openmoe2_jax.configs.ablations import build, ec

SECTION = 10
TITLE = "batch- vs sequence-level EC"


def ec_seq(c):
    c.moe.ec_group = "sequence"
    return c


VARIANTS = {"ec": ec, "ec_seq": ec_seq}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
