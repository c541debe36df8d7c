"""Section 7: upcycling from a dense checkpoint vs training the MoE from scratch.

`dense_source` is the FLOPs-matched dense model trained for a quarter of the budget; `ec_upcycle`
starts from its checkpoint (slicing its FFN into the fine-grained experts: the dense width is
(k + shared) x f, a multiple of f) and trains the full budget. `moe.upcycle_from` is filled in by
the reproduce command with the dense_source workdir (DEPENDS).
"""
from openmoe2_jax import flops
from openmoe2_jax.configs.ablations import build, ec

SECTION = 7
TITLE = "upcycling"


def dense_source(c):
    c = flops.matched_dense(c, "flops")
    c.train.steps = max(c.train.steps // 4, 2)
    c.train.warmup_steps = min(c.train.warmup_steps, c.train.steps)
    return c


def ec_upcycle(c):
    c.moe.update(upcycle_method="slice", upcycle_from="<workdir of dense_source>")
    return c


VARIANTS = {"dense_source": dense_source, "ec": ec, "ec_upcycle": ec_upcycle}
DEPENDS = {"ec_upcycle": "dense_source"}
COMPARED = ("ec", "ec_upcycle")


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
