"""The runs of an IsoFLOP sweep: for each FLOP budget, a ladder of model sizes, each trained on
tokens = budget / (training FLOPs per token) (openmoe2_jax/flops.py).

Size ladder of a scale (configs/scales.py), from its base model (width d0, depth L0, head width h0,
expert width f0, dense width m0): widths d = d0 x WIDTHS rounded to a multiple of h0, with heads d / h0;
a width below two such heads (d0 x multiple < 2 h0: the cpu ladder's 16 and 24) keeps two heads of
half its width instead (d rounded to a multiple of 4, head width d / 2, even for RoPE); depth
L = max(1, round(d L0 / d0)) (the base aspect ratio d / L); expert width f0 d / d0 and dense
width m0 d / d0 (so the MoE's active FFN stays the FLOPs-matched dense width). The number of experts,
k, shared experts and every routing knob stay the scale's. `ffn=dense` is the FLOPs-matched dense model
of each MoE size (flops.matched_dense).

Steps = round(tokens / (batch x seq)) at the scale's batch and sequence length, so a run's FLOPs are
within 0.5 / steps of its budget; sizes that would train fewer than MIN_STEPS steps (FLOPs off by more
than 1%) or more than max_steps are left out of that budget. Data-constrained runs add
`data.max_train_tokens = U` (the first U training tokens, repeated). All other runs read the training
split in order and start it again when it runs out (`data.num_epochs = 0`): at the cpu scale the bundled
corpus holds about 1.1M training tokens, so a small model at a large budget repeats it; use a larger
corpus (config.data) for single-pass laws beyond that.

The law's N is the non-embedding parameter count active per token (dense: all non-embedding
parameters); both it and the total count are recorded with each run.
"""
from __future__ import annotations

import dataclasses

from openmoe2_jax import flops
from openmoe2_jax.configs import resolve, scales

WIDTHS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # multiples of the scale's base width
MIN_STEPS = 50                             # 0.5 / 50 = 1%: the FLOPs of a run within 1% of its budget


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the sweep (its config has steps, eval and checkpoint cadence set)."""
    name: str            # e.g. "diffusion_moe_C3e+12_d64" (+ "_U100000" when data-constrained)
    budget: float        # C, FLOPs
    config: object       # ml_collections.ConfigDict
    n: int               # non-embedding active parameters (the law's N)
    total_params: int
    flops_per_token: float
    tokens: int          # D = steps x batch x seq
    unique_tokens: int   # U (0 = not constrained)

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens


def size(scale: str, multiple: float, objective: str, ffn: str):
    """The ladder's model at `multiple` x the base width of `scale` (steps not yet set)."""
    c = scales.get(scale)
    m, moe = c.model, c.moe
    head, target = resolve.head_dim(m), m.d_model * multiple
    if target >= 2 * head:
        d = int(round(target / head)) * head
    else:  # too narrow for two heads of the base width: two narrower heads
        d = max(4, int(round(target / 4)) * 4)
        head = d // 2
    ratio = d / m.d_model
    c.model.update(d_model=d, num_layers=max(1, int(round(m.num_layers * ratio))), num_heads=d // head,
                   num_kv_heads=d // head, head_dim=head, mlp_dim=int(round(m.mlp_dim * ratio)))
    c.moe.update(expert_mlp_dim=max(1, int(round(moe.expert_mlp_dim * ratio))))
    if moe.shared_mlp_dim:
        c.moe.shared_mlp_dim = int(round(moe.shared_mlp_dim * ratio))
    c.objective.kind = objective
    if objective == "ar":
        c.moe.routing = "tc"  # expert choice would leak the future in a causal model
    if ffn == "dense":
        c = flops.matched_dense(c, "flops")
    return c


def points(scale: str, objective: str, ffn: str, budgets, unique_tokens=(), max_steps: int = 100_000,
           widths=WIDTHS) -> list[Point]:
    """Every run of the sweep: budgets x ladder (x unique-token budgets U, each only where the run
    would see more than U tokens)."""
    if objective not in ("diffusion", "ar") or ffn not in ("dense", "moe"):
        raise ValueError(f"--objective={objective!r} --ffn={ffn!r}: expected diffusion|ar and dense|moe")
    if not budgets:
        raise ValueError("--budgets: expected at least one FLOP budget")
    out = []
    for budget in budgets:
        if budget <= 0:
            raise ValueError(f"--budgets: {budget:g} is not a positive number of FLOPs")
        for multiple in widths:
            c = size(scale, multiple, objective, ffn)
            mc = flops.model_config(c)
            per_token = flops.train_flops_per_token(mc, c.data.seq_len)
            step_tokens = resolve.step_tokens(c)
            steps = int(round(budget / per_token / step_tokens))
            if not MIN_STEPS <= steps <= max_steps:
                continue
            c.train.update(steps=steps, warmup_steps=max(1, steps // 20))
            c.eval.every_steps = steps  # the final loss only
            c.checkpoint.update(every_steps=max(1, steps // 2))
            counts = flops.param_counts(mc)
            base = f"{objective}_{ffn}_C{budget:.0e}_d{c.model.d_model}"
            for u in (0, *unique_tokens):
                if u and u >= steps * step_tokens:
                    continue
                run = c.copy_and_resolve_references()
                run.data.max_train_tokens = u
                out.append(Point(base + (f"_U{u}" if u else ""), float(budget), run,
                                 counts["active_non_embedding"], counts["total"], per_token,
                                 steps * step_tokens, u))
    return out
