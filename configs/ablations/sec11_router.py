"""Section 11: softmax vs sigmoid gates (both normalised over the experts that chose a token)."""
from openmoe2_jax.configs.ablations import build, ec

SECTION = 11
TITLE = "softmax vs sigmoid router"


def ec_sigmoid(c):
    c.moe.gate = "sigmoid"
    return c


VARIANTS = {"ec": ec, "ec_sigmoid": ec_sigmoid}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
