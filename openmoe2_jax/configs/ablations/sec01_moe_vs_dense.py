"""Section 1: MoE vs FLOPs-matched and parameter-matched dense (diffusion, 1 epoch)."""
from openmoe2_jax import flops
from openmoe2_jax.configs.ablations import build, ec, lower, same, tc
from openmoe2_jax.experiments.stats import combine

SECTION = 1
TITLE = "MoE vs dense"
QUESTION = "Does the MoE beat the dense model of equal FLOPs, and how close does it get to equal parameters?"
PUBLISHED = ("at 100B tokens: C4 val loss 1.7B dense 3.38, 8B dense 3.16, MoE (EC = TC) 3.25; "
             "HellaSwag 47 / 57.5 / 51; MMLU-val 30.4 / 34.2 / 33.2")
VARIANTS = {
    "dense_1b7": lambda c: flops.matched_dense(c, "flops"),
    "dense_8b": lambda c: flops.matched_dense(c, "params"),
    "tc": tc,
    "ec": ec,
}


def direction(r):
    """The paper's order dense_8b < MoE < dense_1b7, with EC = TC."""
    return combine([lower(r, "dense_8b", "ec"), lower(r, "ec", "dense_1b7"), same(r, "ec", "tc")])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
