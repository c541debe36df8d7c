"""Section 10: batch-level vs sequence-level expert choice."""
from openmoe2_jax.configs.ablations import build, ec, lower
from openmoe2_jax.experiments.stats import combine

SECTION = 10
TITLE = "batch- vs sequence-level EC"
QUESTION = "Should experts choose among all tokens of the batch or within each sequence?"
PUBLISHED = "batch-level better"


def ec_seq(c):
    c.moe.ec_group = "sequence"
    return c


VARIANTS = {"ec": ec, "ec_seq": ec_seq}


def direction(r):
    return combine([lower(r, "ec", "ec_seq")])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
