"""Scaling-law fits over finished runs (pure functions on arrays; scipy's L-BFGS for the optimiser).

A run is a point (N, D, L) and, for data-constrained runs, U: N the model size the law uses (this
project: non-embedding parameters active per token; for a dense model all of them), D the tokens
trained on, C its training FLOPs, U the unique tokens it saw (D / U epochs), L its final validation loss
in nats/token.

(a) IsoFLOP minima: for each budget C, a parabola in log N through the losses of that budget's ladder;
    its vertex is N_opt(C) (D_opt(C) = C / FLOPs-per-token at N_opt). Power laws N_opt = k_N C^a and
    D_opt = k_D C^b are straight lines in log-log space over the budgets.
(b) The parametric fit L(N, D) = E + A / N^alpha + B / D^beta, as the compute-optimal scaling literature
    does: minimise the Huber loss (delta = 1e-3) of log L_pred - log L, with log L_pred written as
    logsumexp(a - alpha log N, b - beta log D, e) (A = e^a, B = e^b, E = e^e), by L-BFGS from a grid of
    initialisations, keeping the best.
(c) Data-constrained: repeated tokens are worth less. With R = D / U - 1 repetitions of U unique tokens,
    the effective data is D' = U + U R* (1 - exp(-R / R*)) (D' = D for D <= U); L = E + A/N^alpha + B/D'^beta,
    all six coefficients fitted jointly the same way to single-pass and repeated runs.
Confidence intervals: the bootstrap over runs (resampled with replacement, refitted), 2.5 and 97.5
percentiles.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize, special

HUBER_DELTA = 1e-3
CI = (2.5, 97.5)


class FitError(ValueError):
    """Too few or unusable points for a fit (the message says which and what is needed)."""


# ----- (a) IsoFLOP profiles -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IsoFlop:
    budget: float          # C, FLOPs
    n_opt: float           # vertex of the parabola in log N
    loss_opt: float        # the parabola's value there
    coefficients: tuple    # (c0, c1, c2) of L = c0 + c1 x + c2 x^2, x = ln N


def isoflop_minimum(n, loss, budget: float) -> IsoFlop:
    """The parabola in ln N through one budget's (N, L) points and its vertex.

    n, loss: [points], at least 3 distinct N. Refuses a parabola that opens downwards or a vertex
    outside the ladder (the ladder does not bracket the optimum)."""
    x, y = np.log(np.asarray(n, float)), np.asarray(loss, float)
    if len(np.unique(x)) < 3:
        raise FitError(f"budget {budget:.3g} FLOPs: {len(np.unique(x))} model sizes; an IsoFLOP parabola "
                       "needs at least 3")
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        raise FitError(f"budget {budget:.3g} FLOPs: the losses do not curve upwards around a minimum "
                       f"(quadratic coefficient {c2:.3g}); extend the ladder on both sides")
    vertex = -c1 / (2 * c2)
    if not x.min() <= vertex <= x.max():
        raise FitError(f"budget {budget:.3g} FLOPs: the minimum (N = {math.exp(vertex):.3g}) lies outside "
                       f"the ladder ({math.exp(x.min()):.3g} .. {math.exp(x.max()):.3g}); extend it")
    return IsoFlop(budget, float(math.exp(vertex)), float(c0 + c1 * vertex + c2 * vertex ** 2), (c0, c1, c2))


def power_law(x, y) -> tuple[float, float]:
    """(k, exponent) of y = k x^exponent, least squares in log-log space; at least 2 distinct x."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(np.unique(lx)) < 2:
        raise FitError(f"{len(np.unique(lx))} FLOP budget(s); a power law in C needs at least 2")
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(math.exp(intercept)), float(slope)


def isoflop_fit(points: list[dict]) -> dict:
    """(a) over runs {budget, n, d, loss}: per-budget minima and the N_opt / D_opt power laws.

    A budget whose parabola `isoflop_minimum` refuses (fewer than 3 sizes, no upward curve, a vertex
    outside its ladder) is listed under `refused` with the reason and left out of the power laws,
    which need at least 2 budgets with a minimum. D_opt of a budget: C / (FLOPs per token at N_opt),
    the FLOPs per token interpolated log-log between that budget's ladder points (C / D of each run)."""
    budgets = sorted({p["budget"] for p in points})
    minima, d_opt, refused = [], [], []
    for c in budgets:
        pts = sorted((p for p in points if p["budget"] == c), key=lambda p: p["n"])
        try:
            m = isoflop_minimum([p["n"] for p in pts], [p["loss"] for p in pts], c)
        except FitError as e:
            refused.append(dict(budget=c, reason=str(e)))
            continue
        per_token = np.interp(math.log(m.n_opt), [math.log(p["n"]) for p in pts],
                              [math.log(c / p["d"]) for p in pts])
        minima.append(m)
        d_opt.append(c / math.exp(per_token))
    if len(minima) < 2:
        reasons = "; ".join(r["reason"] for r in refused)
        raise FitError(f"{len(minima)} FLOP budget(s) with an IsoFLOP minimum; a power law in C needs at "
                       f"least 2" + (f" ({reasons})" if reasons else ""))
    k_n, a = power_law([m.budget for m in minima], [m.n_opt for m in minima])
    k_d, b = power_law([m.budget for m in minima], d_opt)
    return dict(minima=[dataclasses.asdict(m) | dict(d_opt=d) for m, d in zip(minima, d_opt)],
                refused=refused, n_opt=dict(k=k_n, exponent=a), d_opt=dict(k=k_d, exponent=b))


def isoflop_fit_flat(points: list[dict]) -> dict:
    """The two exponents of `isoflop_fit` (for the bootstrap)."""
    fitted = isoflop_fit(points)
    return dict(n_opt_exponent=fitted["n_opt"]["exponent"], d_opt_exponent=fitted["d_opt"]["exponent"])


# ----- (b) the parametric law ------------------------------------------------------------------------


def _huber(r, delta: float = HUBER_DELTA):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r ** 2, delta * (a - 0.5 * delta))


def _log_pred(theta, log_n, log_d):
    """theta = (a, b, e, alpha, beta) -> ln L_pred = logsumexp(a - alpha ln N, b - beta ln D, e)."""
    a, b, e, alpha, beta = theta
    return special.logsumexp(np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0)


def _objective(theta, log_n, log_d, log_l):
    return float(np.sum(_huber(_log_pred(theta, log_n, log_d) - log_l)))


# The grid of initialisations (a, b, e, alpha, beta), as the compute-optimal literature uses.
GRID = dict(a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0), b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
            e=(-1.0, -0.5, 0.0, 0.5, 1.0), alpha=(0.0, 0.5, 1.0, 1.5, 2.0), beta=(0.0, 0.5, 1.0, 1.5, 2.0))


SCREEN = 8  # of a larger set of initialisations, L-BFGS starts from the SCREEN with the lowest objective


# (a, b, e, alpha, beta[, ln R*]): the exponents are kept >= 0 (a loss that falls with N and D); with
# few runs an unbounded fit trades a negative exponent against a vanishing coefficient. The log
# coefficients stay where exp() is a positive float (a run-away fit overflowed it, another underflowed
# E to 0, whose log a refit could not start from).
BOUNDS = [(-50.0, 500.0)] * 2 + [(-50.0, 10.0)] + [(0.0, None)] * 2


def _minimise(objective, inits, bounds) -> np.ndarray:
    inits = [np.asarray(t, float) for t in inits]
    if len(inits) > SCREEN:
        inits = sorted(inits, key=objective)[:SCREEN]
    best = None
    for theta0 in inits:
        # The Huber values are ~1e-6: L-BFGS's default tolerances would stop at the first step.
        res = optimize.minimize(objective, theta0, method="L-BFGS-B", bounds=bounds,
                                options=dict(gtol=1e-14, ftol=1e-16, maxiter=20_000, maxfun=100_000))
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def _as_law(theta) -> dict:
    a, b, e, alpha, beta = (float(t) for t in theta)
    return dict(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def law_theta(law: dict) -> tuple:
    """The optimiser's parameters (a, b, e, alpha, beta) of a law (to start a refit from it)."""
    return (math.log(law["A"]), math.log(law["B"]), math.log(law["E"]), law["alpha"], law["beta"])


def parametric_fit(n, d, loss, inits=None) -> dict:
    """(b): {E, A, alpha, B, beta} of L = E + A/N^alpha + B/D^beta. n, d, loss: [runs], at least 5 runs
    with at least 2 distinct N and 2 distinct D. `inits`: thetas (a, b, e, alpha, beta) to start from
    (default: every point of GRID, screened by the objective; L-BFGS from the SCREEN best)."""
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    if len(loss) < 5 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise FitError(f"{len(loss)} runs with {len(np.unique(n))} sizes and {len(np.unique(d))} token "
                       "counts; the parametric fit needs at least 5 runs, 2 sizes and 2 token counts")
    args = (np.log(n), np.log(d), np.log(loss))
    inits = inits if inits is not None else itertools.product(*GRID.values())
    return _as_law(_minimise(lambda t: _objective(t, *args), inits, BOUNDS))


def predict(law: dict, n, d):
    """L(N, D) of a fitted law (with R_star: D is the effective data of `effective_data`)."""
    return law["E"] + law["A"] / np.asarray(n, float) ** law["alpha"] + law["B"] / np.asarray(d, float) ** law["beta"]


# ----- (c) data-constrained --------------------------------------------------------------------------


def effective_data(d, u, r_star: float):
    """D' = U + U R* (1 - exp(-R / R*)), R = D / U - 1 repetitions; D' = D where D <= U."""
    d, u = np.asarray(d, float), np.asarray(u, float)
    r = np.maximum(d / u - 1.0, 0.0)
    return np.where(d <= u, d, u + u * r_star * (1.0 - np.exp(-r / r_star)))


def _log_pred_constrained(theta, log_n, d, u):
    """theta = (a, b, e, alpha, beta, ln R*): ln L_pred with D replaced by the effective data D'."""
    log_d = np.log(effective_data(d, u, math.exp(theta[5])))
    return _log_pred(theta[:5], log_n, log_d)


R_STAR_INITS = (0.5, 2.0, 5.0, 15.0, 50.0, 200.0)
LOG_R_STAR_RANGE = (math.log(1e-2), math.log(1e6))  # R* is fitted within [0.01, 1e6]


def data_constrained_fit(law: dict, n, d, u, loss) -> dict:
    """(c): the law with repeated data, {E, A, alpha, B, beta, R_star} of L = E + A/N^alpha + B/D'^beta,
    fitted jointly (the same Huber objective) to runs (n, d, u, loss) [runs] -- single-pass runs
    (D <= U, where D' = D) and at least 2 repeated ones (D > U) -- from the GRID and `law` (the
    single-pass fit (b), or None) crossed with R_STAR_INITS, or from `law` alone when it has an R_star
    (a refit: the bootstrap). Fitting every coefficient, not only R*, lets runs that repeated their data inform
    the exponents when few runs saw it only once."""
    n, d, u, loss = (np.asarray(v, float) for v in (n, d, u, loss))
    if int(np.sum(d > u)) < 2:
        raise FitError(f"{int(np.sum(d > u))} run(s) trained past one epoch (D > U); the data-constrained "
                       "fit needs at least 2")
    if len(loss) < 6 or len(np.unique(n)) < 2:
        raise FitError(f"{len(loss)} runs with {len(np.unique(n))} sizes; the data-constrained fit needs at "
                       "least 6 runs and 2 sizes")
    args = (np.log(n), d, u, np.log(loss))

    def objective(theta):
        return float(np.sum(_huber(_log_pred_constrained(theta, *args[:3]) - args[3])))

    if law is not None and "R_star" in law:  # a refit (the bootstrap): from the fitted law only
        inits = [(*law_theta(law), math.log(law["R_star"]))]
    else:  # the GRID (and (b)'s law) crossed with R_STAR_INITS, screened by the objective
        starts = list(itertools.product(*GRID.values())) + ([law_theta(law)] if law is not None else [])
        inits = [(*t, math.log(r)) for t in starts for r in R_STAR_INITS]
    best = _minimise(objective, inits, BOUNDS + [LOG_R_STAR_RANGE])
    return dict(_as_law(best[:5]), R_star=math.exp(float(best[5])))


# ----- bootstrap -------------------------------------------------------------------------------------


def bootstrap(fit, rows: list, samples: int = 200, seed: int = 0) -> list:
    """`fit` (rows -> dict of numbers) on `samples` resamplings of `rows` with replacement; resamplings
    the fit refuses (FitError) are skipped. Returns the list of fitted dicts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        pick = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        try:
            out.append(fit(pick))
        except FitError:
            continue
    if not out:
        raise FitError(f"none of {samples} bootstrap resamplings of {len(rows)} runs could be fitted")
    return out


def intervals(fits: list[dict], keys) -> dict:
    """{key: (low, high)}: the CI percentiles of each key over bootstrap fits."""
    return {k: tuple(float(v) for v in np.percentile([f[k] for f in fits], CI)) for k in keys}


def compute_optimal(law: dict, flops: float, flops_per_token, sizes) -> dict:
    """The size among `sizes` (a fine grid of N) minimising L(N, C / flops_per_token(N)) under the law."""
    sizes = np.asarray(sizes, float)
    tokens = flops / np.asarray([flops_per_token(s) for s in sizes])
    losses = predict(law, sizes, tokens)
    i = int(np.argmin(losses))
    return dict(n=float(sizes[i]), d=float(tokens[i]), loss=float(losses[i]))
