"""Section 4: a token-wise load-balancing loss for expert choice (coefficient 1e-2, not published)."""
from openmoe2_jax.configs.ablations import build, ec

SECTION = 4
TITLE = "token-wise load balancing for EC"


def ec_lbl(c):
    c.moe.ec_balance_loss = 1e-2
    return c


VARIANTS = {"ec": ec, "ec_lbl": ec_lbl}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
