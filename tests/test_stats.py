"""Statistics over seeds and the verdict rule, on hand-made numbers with hand-computed answers."""
import math

import pytest

from openmoe2_jax.experiments import claims, registry, stats
from openmoe2_jax.experiments.stats import AGREES, DISAGREES, NO_DIFFERENCE


def test_summary_is_mean_sample_std_and_standard_error():
    s = stats.summary([1.0, 2.0, 3.0, 4.0])
    # By hand: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (n - 1) = 5/3.
    assert s.n == 4 and s.mean == 2.5
    assert s.std == pytest.approx(1.2909944487)
    assert s.sem == pytest.approx(1.2909944487 / 2)


def test_summary_of_one_value_has_no_error_estimate():
    s = stats.summary([6.1])
    assert (s.mean, s.n) == (6.1, 1) and math.isnan(s.std) and math.isnan(s.sem)
    assert stats.format_summary(s) == "6.1000 (n=1: no error estimate)"
    # [1000, 1200]: mean 1100, std sqrt(2 * 100^2 / 1) = 141.4.
    speed = stats.summary([1000.0, 1200.0])
    assert stats.format_summary(speed, digits=0, thousands=True) == "1,100 ± 141 (2)"


@pytest.mark.parametrize("values, match", [([], "at least one value"), ([1.0, float("nan")], "finite")])
def test_summary_refuses_empty_or_non_finite_values(values, match):
    with pytest.raises(ValueError, match=match):
        stats.summary(values)


def test_clear_difference_counts():
    c = stats.compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    # Both: mean m, std 0.1, n 3 -> SE = sqrt(0.01/3 + 0.01/3) = 0.08165; |diff| = 1 > 0.1633.
    assert c.diff == pytest.approx(-1.0) and c.se == pytest.approx(0.0816497, rel=1e-5)
    assert c.significant and "exceeds 2 SE" in c.describe("a", "b")


def test_tiny_difference_within_noise_does_not_count():
    c = stats.compare([1.0, 1.1, 0.9], [1.05, 1.15, 0.95])
    assert c.diff == pytest.approx(-0.05) and c.se == pytest.approx(0.0816497, rel=1e-5)
    assert not c.significant
    assert "no measurable difference" in c.describe("a", "b")


def test_threshold_is_two_standard_errors_with_sample_std():
    # a: mean 0.1, s = sqrt(0.02) = 0.14142 (ddof 1; ddof 0 would give 0.1); b: s = 0.
    # SE = 0.14142 / sqrt(2) = 0.1, so the threshold is |diff| > 0.2.
    assert stats.compare([0.0, 0.2], [0.31, 0.31]).significant
    assert not stats.compare([0.0, 0.2], [0.29, 0.29]).significant
    # Unequal n: a = [1, 2, 3] (s 1), b = [2, 4] (s sqrt 2): SE = sqrt(1/3 + 2/2).
    assert stats.compare([1, 2, 3], [2, 4]).se == pytest.approx(math.sqrt(4 / 3))


def test_one_seed_never_counts_and_says_so():
    c = stats.compare([1.0], [5.0, 5.1])
    assert c.diff == pytest.approx(-4.05) and math.isnan(c.se) and not c.significant
    assert "n=1: no error estimate" in c.describe("a", "b")
    for claim in (stats.claim_lower, stats.claim_higher, stats.claim_same, stats.claim_no_gain):
        outcome, reason = claim([1.0], [5.0], "a", "b")
        assert outcome == NO_DIFFERENCE and "n=1: no error estimate" in reason


def test_claims_of_a_difference_and_of_no_difference():
    low, high, near = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9], [1.05, 1.15, 0.95]
    assert stats.claim_lower(low, high, "a", "b")[0] == AGREES
    assert stats.claim_lower(high, low, "a", "b")[0] == DISAGREES
    assert stats.claim_lower(low, near, "a", "b")[0] == NO_DIFFERENCE
    assert stats.claim_higher(high, low, "a", "b")[0] == AGREES
    assert stats.claim_same(low, near, "a", "b")[0] == AGREES
    assert stats.claim_same(low, high, "a", "b")[0] == DISAGREES
    assert stats.claim_no_gain(high, low, "a", "b")[0] == AGREES       # measurably worse: no gain
    assert stats.claim_no_gain(near, low, "a", "b")[0] == AGREES
    assert stats.claim_no_gain(low, high, "a", "b")[0] == DISAGREES    # measurably better: a gain


def test_combine_disagreement_wins_then_no_difference():
    a, d, n = (AGREES, "x"), (DISAGREES, "y"), (NO_DIFFERENCE, "z")
    assert stats.combine([a, a]) == (AGREES, "x [agrees]; x [agrees]")
    assert stats.combine([a, n])[0] == NO_DIFFERENCE
    assert stats.combine([n, d, a])[0] == DISAGREES
    with pytest.raises(ValueError, match="expected at least one outcome"):
        stats.combine([("maybe", "w")])


def _results(**losses):
    return {v: dict(validation_loss=x, tokens_per_second=[1000.0, 1010.0, 990.0]) for v, x in losses.items()}


LOW, HIGH, NEAR = [6.00, 6.01, 5.99], [6.10, 6.11, 6.09], [6.005, 6.015, 5.995]


def test_section_with_a_claimed_difference_gives_each_outcome():
    direction = claims.CLAIMS[4].check  # published: ec below ec_lbl
    assert direction(_results(ec=LOW, ec_lbl=HIGH))[0] == AGREES
    assert direction(_results(ec=HIGH, ec_lbl=LOW))[0] == DISAGREES
    outcome, reason = direction(_results(ec=LOW, ec_lbl=NEAR))
    assert outcome == NO_DIFFERENCE and reason.startswith("ec below ec_lbl: ec − ec_lbl = -0.0050, SE ")
    assert direction(_results(ec=[6.0], ec_lbl=[6.5]))[0] == NO_DIFFERENCE  # n = 1
    assert direction(_results(ec=LOW, ec_lbl=[6.1, float("nan"), 6.2])) == (
        NO_DIFFERENCE,
        "ec below ec_lbl: not measured (no validation_loss of ec_lbl) [no measurable difference]")


def test_section_claiming_no_difference_agrees_when_none_is_measured():
    direction = claims.CLAIMS[11].check  # published: same
    assert direction(_results(ec=LOW, ec_sigmoid=NEAR))[0] == AGREES
    assert direction(_results(ec=LOW, ec_sigmoid=HIGH))[0] == DISAGREES
    assert direction(_results(ec=[6.0], ec_sigmoid=[6.0]))[0] == NO_DIFFERENCE  # n = 1 decides nothing
    direction = claims.CLAIMS[8].check  # published: no gain
    assert direction(_results(ec=LOW, ec_skiplayer=HIGH))[0] == AGREES
    assert direction(_results(ec=HIGH, ec_skiplayer=LOW))[0] == DISAGREES


def test_section3_same_quality_and_faster_ec():
    r = _results(tc=NEAR, ec=LOW)
    r["tc"]["tokens_per_second"] = [1000.0, 1010.0, 990.0]
    r["ec"]["tokens_per_second"] = [1200.0, 1210.0, 1190.0]
    outcome, reason = claims.CLAIMS[3].check(r)
    assert outcome == AGREES and "EC/TC 1.20" in reason
    r["ec"]["tokens_per_second"] = [1001.0, 1011.0, 991.0]
    assert claims.CLAIMS[3].check(r)[0] == NO_DIFFERENCE  # same quality, speed not measurable
    r["tc"]["validation_loss"] = HIGH
    assert claims.CLAIMS[3].check(r)[0] == DISAGREES       # quality differs


# With every variant equal (3 seeds with noise), a claimed difference is not measured, while claims of
# no difference (section 11's "same", section 8's "no gain") agree.
EQUAL_EXPECTED = {1: NO_DIFFERENCE, 2: NO_DIFFERENCE, 3: NO_DIFFERENCE, 4: NO_DIFFERENCE, 5: NO_DIFFERENCE,
                  6: NO_DIFFERENCE, 7: NO_DIFFERENCE, 8: AGREES, 9: NO_DIFFERENCE, 10: NO_DIFFERENCE,
                  11: AGREES}


@pytest.mark.parametrize("number", sorted(registry.SECTION_MODULES))
def test_every_section_direction_on_equal_variants(number):
    module = registry.section(number)
    r = {v: dict(validation_loss=LOW, first_validation_loss=HIGH, tokens_per_second=[1000.0, 1010.0, 990.0])
         for v in module.VARIANTS}
    outcome, reason = claims.CLAIMS[number].check(r)
    assert outcome == EQUAL_EXPECTED[number] and reason
    # An old results.json with one number per variant reads as n = 1: nothing is decided.
    old = {v: dict(validation_loss=6.0, first_validation_loss=7.0, tokens_per_second=1000.0)
           for v in module.VARIANTS}
    assert claims.CLAIMS[number].check(old)[0] == NO_DIFFERENCE


def test_rule_sentence_states_the_threshold_and_the_seeds():
    assert stats.rule(3).startswith(
        "a difference counts if it exceeds 2 standard errors of the difference of the means over 3 seeds")
    assert "n=1: no error estimate" in stats.rule(1) and "n=1" not in stats.rule(3)
