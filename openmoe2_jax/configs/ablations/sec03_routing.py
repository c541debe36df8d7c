"""Section 3: token choice vs expert choice at equal active FLOPs."""
from openmoe2_jax.configs.ablations import build, ec, same, tc, values
from openmoe2_jax.experiments import stats

SECTION = 3
TITLE = "token choice vs expert choice"
QUESTION = "At equal active FLOPs, do EC and TC reach the same quality, and is EC faster?"
PUBLISHED = "same quality; EC +20% throughput"
VARIANTS = {"tc": tc, "ec": ec}


def direction(r):
    """Same validation loss; EC more tokens/s than TC (published: 1.2x; the measured ratio is shown)."""
    ec_speed, tc_speed = values(r, "ec", "tokens_per_second"), values(r, "tc", "tokens_per_second")
    outcome, reason = stats.claim_higher(ec_speed, tc_speed, "ec", "tc", digits=0)
    ratio = stats.summary(ec_speed).mean / stats.summary(tc_speed).mean if any(tc_speed) else float("nan")
    faster = outcome, f"ec tokens/s above tc (EC/TC {ratio:.2f}, published 1.2): {reason}"
    return stats.combine([same(r, "ec", "tc"), faster])


def get_config(arg=None):
    return build(VARIANTS, arg, "ec")
