"""Section 8: the first 2 layers dense (FLOPs-matched width), the rest MoE."""
from openmoe2_jax.configs.ablations import build, ec

SECTION = 8
TITLE = "first 2 layers dense"


def ec_skiplayer(c):
    c.moe.update(first_dense_layers=2, dense_mlp_dim=c.model.mlp_dim)
    return c


VARIANTS = {"ec": ec, "ec_skiplayer": ec_skiplayer}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
