"""Section 6: expert granularity at constant total and active parameters (E / 4, E, 4 E routed
experts: paper 16 / 64 / 256; cpu 4 / 16 / 64), via configs.derive.with_granularity."""
from openmoe2_jax.configs import derive
from openmoe2_jax.configs.ablations import build, ec

SECTION = 6
TITLE = "expert granularity"
VARIANTS = {
    "ec_16e": lambda c: derive.with_granularity(c, c.moe.num_experts // 4),
    "ec": ec,
    "ec_256e": lambda c: derive.with_granularity(c, c.moe.num_experts * 4),
}


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
