"""Section 1: MoE vs FLOPs-matched and parameter-matched dense (diffusion, 1 epoch)."""
from openmoe2_jax import flops
from openmoe2_jax.configs.ablations import build, ec, tc

SECTION = 1
TITLE = "MoE vs dense"
VARIANTS = {
    "dense_1b7": lambda c: flops.matched_dense(c, "flops"),
    "dense_8b": lambda c: flops.matched_dense(c, "params"),
    "tc": tc,
    "ec": ec,
}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
