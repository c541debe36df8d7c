"""Section 5: shared experts on / off. `ec_noshared` removes the 2 shared experts (as the study does),
so its active parameters are lower by the shared width."""
from openmoe2_jax.configs.ablations import build, ec

SECTION = 5
TITLE = "shared experts"


def ec_noshared(c):
    c.moe.update(num_shared_experts=0, shared_mlp_dim=0)
    return c


VARIANTS = {"ec": ec, "ec_noshared": ec_noshared}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
