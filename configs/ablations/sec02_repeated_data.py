"""Section 2: diffusion vs AR, dense vs MoE, on repeated data (few unique tokens, many epochs).

Every scale keeps the study's shape by one rule: a run sees the scale's whole token budget T
(steps x batch x seq), drawn from only U = T / EPOCHS unique training tokens (`data.max_train_tokens`)
repeated without end. The paper trained 1B unique tokens for 96 epochs (96B of its ~100B budget);
here EPOCHS = 96 for the main variants and 16 for the `_u6` ones (six times the unique tokens), so
the plot shows two data budgets. The validation set is the usual held-out documents, evaluated
`EVALS` times per run: loss against epochs shows where a model starts to overfit (its held-out loss
turns up) and where diffusion overtakes AR.

The AR MoE is token choice (expert choice would leak the future in a causal model); so is the
diffusion MoE, as in the study. AR NLL and the diffusion ELBO (the unbiased estimator of
objectives/likelihood.py: l of L tokens masked, l stratified over 1..L, weight L/l) are both upper bounds on
the same tokens' nats, so they compare.
"""
from openmoe2_jax import flops
from openmoe2_jax.configs.ablations import build

SECTION = 2
TITLE = "diffusion vs AR on repeated data"

EPOCHS = {"": 96, "_u6": 16}  # variant suffix -> epochs over the unique tokens
EVALS = 16                     # validation points per run


def unique_tokens(c, epochs: int) -> int:
    """U = T / epochs, rounded down to whole rows (at least one batch of rows)."""
    seq, batch = c.data.seq_len, c.train.batch_size
    rows = max(batch, c.train.steps * batch // epochs)
    return rows * seq


def _variant(objective, model, suffix):
    def make(c):
        c.moe.routing = "tc"  # the study's MoE here is token choice, for both objectives
        c.data.update(max_train_tokens=unique_tokens(c, EPOCHS[suffix]), num_epochs=0)
        c.eval.every_steps = max(c.train.steps // EVALS, 1)
        c.objective.kind = {"ar": "ar", "dlm": "diffusion"}[objective]
        if model == "dense_1b":
            c = flops.matched_dense(c, "flops")
        elif model == "dense_8b":
            c = flops.matched_dense(c, "params")
        return c
    return make


VARIANTS = {f"{o}_{m}{s}": _variant(o, m, s)
            for s in EPOCHS for o in ("ar", "dlm") for m in ("dense_1b", "dense_8b", "moe_8b1a")}
COMPARED = tuple(v for v in VARIANTS if not v.endswith("_u6"))


def get_config(arg=None):
    return build(VARIANTS, arg, "dlm_moe_8b1a")
