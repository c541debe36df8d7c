"""Section 3: token choice vs expert choice at equal active FLOPs."""
from openmoe2_jax.configs.ablations import build, close, ec, loss, tc

SECTION = 3
TITLE = "token choice vs expert choice"
QUESTION = "At equal active FLOPs, do EC and TC reach the same quality, and is EC faster?"
PUBLISHED = "same quality; EC +20% throughput"
VARIANTS = {"tc": tc, "ec": ec}


def direction(r):
    speed = r["ec"]["tokens_per_second"] / r["tc"]["tokens_per_second"]
    ok = close(loss(r, "ec"), loss(r, "tc"), 0.01) and speed >= 1.2
    return ok, f"losses within 1% and EC/TC tokens/s >= 1.2 (measured {speed:.2f})"


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
