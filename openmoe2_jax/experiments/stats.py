"""Statistics over seeds and the verdict rule of the ablation tables (pure functions on lists of floats).

Rule: a difference of two means counts only if it exceeds K = 2 standard errors of the difference,
SE = sqrt(s_a^2 / n_a + s_b^2 / n_b) with s the sample standard deviation (ddof = 1); otherwise there
is no measurable difference at this scale. With n = 1 there is no error estimate and no difference
counts, whatever the claim.

A section's claim is made of parts, each one of three outcomes: AGREES, DISAGREES or NO_DIFFERENCE.
A claim of a difference ("a below b") agrees if a is measurably below b, disagrees if measurably
above, and is otherwise NO_DIFFERENCE; a claim of no difference ("same", "no gain") agrees when no
difference (resp. no gain) is measured with n >= 2 seeds, and disagrees when one is. The section's
outcome is DISAGREES if any part disagrees, else NO_DIFFERENCE if any part measured nothing, else AGREES.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

K = 2.0
AGREES, DISAGREES, NO_DIFFERENCE = "agrees", "disagrees", "no measurable difference"
OUTCOMES = (AGREES, DISAGREES, NO_DIFFERENCE)
NO_ERROR = "n=1: no error estimate"


def rule(n_seeds: int) -> str:
    """The verdict rule in one sentence, for the tables."""
    text = (f"a difference counts if it exceeds {K:g} standard errors of the difference of the means over "
            f"{n_seeds} seed{'s' * (n_seeds != 1)} (SE = sqrt(s_a²/n_a + s_b²/n_b), s the sample standard "
            "deviation); otherwise there is no measurable difference at this scale, which agrees with a "
            "claim of no difference")
    if n_seeds < 2:
        text += f" ({NO_ERROR}: no difference counts and no claim is decided)"
    return text + "."


@dataclasses.dataclass(frozen=True)
class Summary:
    mean: float
    std: float    # sample standard deviation (ddof = 1); nan when n = 1
    n: int
    sem: float    # standard error of the mean, std / sqrt(n); nan when n = 1


@dataclasses.dataclass(frozen=True)
class Comparison:
    diff: float         # mean(a) - mean(b)
    se: float           # standard error of the difference; nan when either n = 1
    significant: bool   # |diff| > K se (never with n = 1)
    n_a: int
    n_b: int

    def describe(self, a: str, b: str, digits: int = 4) -> str:
        """e.g. 'ec − tc = -0.0120, SE 0.0030 (n=3/3): exceeds 2 SE'."""
        head = f"{a} − {b} = {self.diff:+,.{digits}f}"
        if math.isnan(self.se):
            return f"{head} ({NO_ERROR})"
        verdict = f"exceeds {K:g} SE" if self.significant else f"within {K:g} SE: no measurable difference"
        return f"{head}, SE {self.se:,.{digits}f} (n={self.n_a}/{self.n_b}): {verdict}"


def _values(values: Sequence[float], what: str = "values") -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what}: expected at least one value, got none")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what}: expected finite numbers, got {bad}")
    return out


def summary(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation (ddof = 1), n and standard error of `values`."""
    xs = _values(values)
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Summary(mean, math.nan, 1, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, std, n, std / math.sqrt(n))


def compare(a_values: Sequence[float], b_values: Sequence[float]) -> Comparison:
    """mean(a) - mean(b), its standard error and whether it counts under the rule (module docstring)."""
    a, b = summary(_values(a_values, "a_values")), summary(_values(b_values, "b_values"))
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Comparison(diff, math.nan, False, a.n, b.n)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    return Comparison(diff, se, abs(diff) > K * se, a.n, b.n)


def _claim_order(a_values, b_values, a: str, b: str, sign: int, digits: int) -> tuple[str, str]:
    c = compare(a_values, b_values)
    if not c.significant:
        return NO_DIFFERENCE, c.describe(a, b, digits)
    return (AGREES if c.diff * sign > 0 else DISAGREES), c.describe(a, b, digits)


def claim_lower(a_values, b_values, a: str, b: str, digits: int = 4) -> tuple[str, str]:
    """The claim "a's mean is below b's" -> (outcome, reason)."""
    return _claim_order(a_values, b_values, a, b, -1, digits)


def claim_higher(a_values, b_values, a: str, b: str, digits: int = 4) -> tuple[str, str]:
    """The claim "a's mean is above b's" -> (outcome, reason)."""
    return _claim_order(a_values, b_values, a, b, +1, digits)


def claim_same(a_values, b_values, a: str, b: str) -> tuple[str, str]:
    """The claim "no difference between a and b" -> (outcome, reason)."""
    c = compare(a_values, b_values)
    if math.isnan(c.se):
        return NO_DIFFERENCE, c.describe(a, b)
    return (DISAGREES if c.significant else AGREES), c.describe(a, b)


def claim_no_gain(a_values, b_values, a: str, b: str) -> tuple[str, str]:
    """The claim "a is not below b" (no gain from a's change) -> (outcome, reason)."""
    c = compare(a_values, b_values)
    if math.isnan(c.se):
        return NO_DIFFERENCE, c.describe(a, b)
    return (DISAGREES if c.significant and c.diff < 0 else AGREES), c.describe(a, b)


def combine(parts: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """Parts (outcome, reason) of one claim -> the claim's (outcome, reason)."""
    outcomes = [o for o, _ in parts]
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if not parts or unknown:
        raise ValueError(f"parts: expected at least one outcome among {OUTCOMES}, got {outcomes}")
    outcome = (DISAGREES if DISAGREES in outcomes else NO_DIFFERENCE if NO_DIFFERENCE in outcomes
               else AGREES)
    return outcome, "; ".join(f"{reason} [{o}]" for o, reason in parts)


def format_summary(s: Summary, digits: int = 4, thousands: bool = False) -> str:
    """'mean ± std (n)', or 'mean (n=1: no error estimate)'."""
    fmt = f",.{digits}f" if thousands else f".{digits}f"
    if s.n == 1:
        return f"{s.mean:{fmt}} ({NO_ERROR})"
    return f"{s.mean:{fmt}} ± {s.std:{fmt}} ({s.n})"
