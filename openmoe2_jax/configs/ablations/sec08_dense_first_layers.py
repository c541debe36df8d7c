"""Section 8: the first 2 layers dense (FLOPs-matched width), the rest MoE."""
from openmoe2_jax.configs.ablations import build, ec, no_gain
from openmoe2_jax.experiments.stats import combine

SECTION = 8
TITLE = "first 2 layers dense"
QUESTION = "Does making the first layers dense help?"
PUBLISHED = "no gain"


def ec_skiplayer(c):
    c.moe.update(first_dense_layers=2, dense_mlp_dim=c.model.mlp_dim)
    return c


VARIANTS = {"ec": ec, "ec_skiplayer": ec_skiplayer}


def direction(r):
    return combine([no_gain(r, "ec_skiplayer", "ec")])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
