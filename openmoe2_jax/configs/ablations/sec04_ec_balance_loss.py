"""Section 4: a token-wise load-balancing loss for expert choice (coefficient 1e-2, not published)."""
from openmoe2_jax.configs.ablations import build, ec, lower
from openmoe2_jax.experiments.stats import combine

SECTION = 4
TITLE = "token-wise load balancing for EC"
QUESTION = "Does balancing how many experts each token gets help expert choice?"
PUBLISHED = "with the loss is worse"


def ec_lbl(c):
    c.moe.ec_balance_loss = 1e-2
    return c


VARIANTS = {"ec": ec, "ec_lbl": ec_lbl}


def direction(r):
    return combine([lower(r, "ec", "ec_lbl")])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
