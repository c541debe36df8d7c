"""Section 11: softmax vs sigmoid gates (both normalised over the experts that chose a token)."""
from openmoe2_jax.configs.ablations import build, close, ec, loss

SECTION = 11
TITLE = "softmax vs sigmoid router"
QUESTION = "Does the gate function matter?"
PUBLISHED = "same; softmax slightly better MMLU"


def ec_sigmoid(c):
    c.moe.router = "sigmoid"
    return c


VARIANTS = {"ec": ec, "ec_sigmoid": ec_sigmoid}


def direction(r):
    return close(loss(r, "ec"), loss(r, "ec_sigmoid"), 0.01), "losses within 1%"


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
