"""What the study claims for each ablation section, and how a section's measured results are checked
against it. The configs of the variants live in configs/ablations/ (data only); this is the science.

CLAIMS[section] holds the question the section asks, the published result, and `check`: results ->
(outcome, reason), the outcome one of stats.OUTCOMES. `results` maps each variant to its per-seed
metrics (results.json of `reproduce`); a check is the published claim taken part by part with `lower`,
`same` and `no_gain` on those per-seed values, combined by stats.combine.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from openmoe2_jax.experiments import stats


@dataclasses.dataclass(frozen=True)
class Claim:
    question: str
    published: str
    check: Callable[[dict], tuple[str, str]]


def values(results, variant: str, metric: str = "validation_loss") -> list[float]:
    """The per-seed values of `metric` of `variant` (a single number counts as one seed)."""
    try:
        v = results[variant][metric]
    except KeyError:
        raise ValueError(f"results[{variant!r}][{metric!r}]: missing; expected the per-seed values of "
                         f"every variant of the section, got variants {sorted(results)}") from None
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _part(claim, results, a: str, b: str, metric: str, label: str) -> tuple[str, str]:
    va, vb = values(results, a, metric), values(results, b, metric)
    missing = [v for v, xs in ((a, va), (b, vb)) if not all(math.isfinite(x) for x in xs)]
    if missing:
        return stats.NO_DIFFERENCE, f"{label}: not measured (no {metric} of {', '.join(missing)})"
    outcome, reason = claim(va, vb, a, b)
    return outcome, f"{label}: {reason}"


def lower(results, a: str, b: str, metric: str = "validation_loss", claim: str = "") -> tuple[str, str]:
    """Part of a claim: `a`'s mean `metric` is below `b`'s (a claimed difference)."""
    return _part(stats.claim_lower, results, a, b, metric, claim or f"{a} below {b}")


def same(results, a: str, b: str, metric: str = "validation_loss") -> tuple[str, str]:
    """Part of a claim: no difference between `a` and `b`."""
    return _part(stats.claim_same, results, a, b, metric, f"{a} same as {b}")


def no_gain(results, a: str, b: str, metric: str = "validation_loss") -> tuple[str, str]:
    """Part of a claim: `a` (a change to `b`) is not below `b`."""
    return _part(stats.claim_no_gain, results, a, b, metric, f"{a} not below {b}")


def _moe_vs_dense(r):
    """The paper's order dense_8b < MoE < dense_1b7, with EC = TC."""
    return stats.combine([lower(r, "dense_8b", "ec"), lower(r, "ec", "dense_1b7"), same(r, "ec", "tc")])


def _repeated_data(r):
    """dlm_moe_8b1a below dlm_dense_1b and every AR model; ar_moe_8b1a the worst AR model (at the
    paper's 96 epochs)."""
    ar = [f"ar_{m}" for m in ("dense_1b", "dense_8b", "moe_8b1a")]
    return stats.combine([lower(r, "dlm_moe_8b1a", v) for v in ["dlm_dense_1b", *ar]] +
                         [lower(r, v, "ar_moe_8b1a") for v in ar[:2]])


def _routing(r):
    """Same validation loss; EC more tokens/s than TC (published: 1.2x; the measured ratio is shown)."""
    ec_speed, tc_speed = values(r, "ec", "tokens_per_second"), values(r, "tc", "tokens_per_second")
    outcome, reason = stats.claim_higher(ec_speed, tc_speed, "ec", "tc", digits=0)
    ratio = stats.summary(ec_speed).mean / stats.summary(tc_speed).mean if any(tc_speed) else float("nan")
    faster = outcome, f"ec tokens/s above tc (EC/TC {ratio:.2f}, published 1.2): {reason}"
    return stats.combine([same(r, "ec", "tc"), faster])


def _upcycling(r):
    """Upcycled lower at the first evaluation, from scratch lower at the end."""
    return stats.combine([lower(r, "ec_upcycle", "ec", "first_validation_loss",
                                claim="ec_upcycle below ec at the first evaluation"),
                          lower(r, "ec", "ec_upcycle", claim="ec below ec_upcycle at the end")])


CLAIMS = {
    1: Claim("Does the MoE beat the dense model of equal FLOPs, and how close does it get to equal "
             "parameters?",
             "at 100B tokens: C4 val loss 1.7B dense 3.38, 8B dense 3.16, MoE (EC = TC) 3.25; "
             "HellaSwag 47 / 57.5 / 51; MMLU-val 30.4 / 34.2 / 33.2",
             _moe_vs_dense),
    2: Claim("On data repeated for many epochs, which of {AR, diffusion} x {dense 1B, dense 8B, MoE} wins?",
             "DLM MoE beats FLOPs-matched dense DLM and every AR model; AR MoE is the worst of the AR models",
             _repeated_data),
    3: Claim("At equal active FLOPs, do EC and TC reach the same quality, and is EC faster?",
             "same quality; EC +20% throughput", _routing),
    4: Claim("Does balancing how many experts each token gets help expert choice?",
             "with the loss is worse", lambda r: stats.combine([lower(r, "ec", "ec_lbl")])),
    5: Claim("Do the 2 always-on shared experts help?",
             "shared experts help", lambda r: stats.combine([lower(r, "ec", "ec_noshared")])),
    6: Claim("At constant total and active parameters, how many (finer) experts is best?",
             "rises then falls (64 experts best of 16 / 64 / 256)",
             lambda r: stats.combine([lower(r, "ec", "ec_16e"), lower(r, "ec", "ec_256e")])),
    7: Claim("Does starting the MoE from a trained dense model beat training it from scratch?",
             "upcycled starts higher, is overtaken mid-training", _upcycling),
    8: Claim("Does making the first layers dense help?",
             "no gain", lambda r: stats.combine([no_gain(r, "ec_skiplayer", "ec")])),
    9: Claim("Does scaling the gates so the routed output matches the shared experts' norm help?",
             "TC: no gain; EC: lower train and val loss",
             lambda r: stats.combine([no_gain(r, "tc_scalingfactor", "tc"), lower(r, "ec_scalingfactor", "ec")])),
    10: Claim("Should experts choose among all tokens of the batch or within each sequence?",
              "batch-level better", lambda r: stats.combine([lower(r, "ec", "ec_seq")])),
    # The MMLU part of the claim is not measured here: same validation loss.
    11: Claim("Does the gate function matter?",
              "same; softmax slightly better MMLU", lambda r: stats.combine([same(r, "ec", "ec_sigmoid")])),
}
