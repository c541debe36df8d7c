"""Section 11: softmax vs sigmoid gates (both normalised over the experts that chose a token)."""
from openmoe2_jax.configs.ablations import build, ec, same
from openmoe2_jax.experiments.stats import combine

SECTION = 11
TITLE = "softmax vs sigmoid router"
QUESTION = "Does the gate function matter?"
PUBLISHED = "same; softmax slightly better MMLU"


def ec_sigmoid(c):
    c.moe.router = "sigmoid"
    return c


VARIANTS = {"ec": ec, "ec_sigmoid": ec_sigmoid}


def direction(r):
    """Same validation loss (the MMLU part of the claim is not measured here)."""
    return combine([same(r, "ec", "ec_sigmoid")])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
