"""Section 2: diffusion vs AR, dense vs MoE, on repeated data (few unique tokens, many epochs).

The AR MoE is token choice (expert choice would leak the future in a causal model). Every scale keeps
the study's shape: a small unique-token budget (`data.max_train_tokens`) repeated for many epochs
(paper: 1B unique tokens x 96 epochs; tiny: 12,800 unique tokens x ~12 epochs).
"""
from openmoe2_jax import flops
from openmoe2_jax.configs.ablations import build, lower
from openmoe2_jax.experiments.stats import combine

SECTION = 2
TITLE = "diffusion vs AR on repeated data"
QUESTION = "On data repeated for many epochs, which of {AR, diffusion} x {dense 1B, dense 8B, MoE} wins?"
PUBLISHED = "DLM MoE beats FLOPs-matched dense DLM and every AR model; AR MoE is the worst of the AR models"


def _repeated(c):
    c.moe.routing = "tc"  # the study's MoE here is token choice, for both objectives
    if c.train.steps >= 1000:  # paper / small: 1B (resp. 50M) unique tokens, 96 epochs
        unique = 1_000_000_000 if c.data.seq_len == 4096 else 50_000_000
        c.data.update(max_train_tokens=unique, num_epochs=96)
        c.train.steps = unique * 96 // (c.data.seq_len * c.train.batch_size)
    else:
        rows = max(c.train.batch_size, c.train.steps * c.train.batch_size // 12)
        c.data.update(max_train_tokens=rows * c.data.seq_len, num_epochs=0)
    return c


def _variant(objective, model):
    def make(c):
        c = _repeated(c)
        c.objective.kind = {"ar": "ar", "dlm": "diffusion"}[objective]
        if model == "dense_1b":
            c = flops.matched_dense(c, "flops")
        elif model == "dense_8b":
            c = flops.matched_dense(c, "params")
        return c
    return make


VARIANTS = {f"{o}_{m}": _variant(o, m) for o in ("ar", "dlm") for m in ("dense_1b", "dense_8b", "moe_8b1a")}


def direction(r):
    """dlm_moe_8b1a below dlm_dense_1b and every AR model; ar_moe_8b1a the worst AR model. (AR NLL and
    the diffusion ELBO are both nats/token upper bounds on the same tokens, so they compare.)"""
    ar = [f"ar_{m}" for m in ("dense_1b", "dense_8b", "moe_8b1a")]
    return combine([lower(r, "dlm_moe_8b1a", v) for v in ["dlm_dense_1b", *ar]] +
                   [lower(r, v, "ar_moe_8b1a") for v in ar[:2]])


def get_config(arg=None):
    return build(VARIANTS, arg, "dlm_moe_8b1a")
