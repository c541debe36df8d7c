"""Section 8: the first 2 layers dense (FLOPs-matched width), the rest MoE."""
from openmoe2_jax.configs.ablations import build, ec, loss

SECTION = 8
TITLE = "first 2 layers dense"
QUESTION = "Does making the first layers dense help?"
PUBLISHED = "no gain"


def ec_skiplayer(c):
    c.moe.update(first_dense_layers=2, dense_mlp_dim=c.model.mlp_dim)
    return c


VARIANTS = {"ec": ec, "ec_skiplayer": ec_skiplayer}


def direction(r):
    return loss(r, "ec_skiplayer") >= loss(r, "ec") * 0.995, "ec_skiplayer not better than ec (0.5% band)"


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
