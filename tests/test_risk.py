"""Risk-controlled thresholds: the bounds' arithmetic by hand, the fixed-sequence choice, and validity by
simulation (over many calibration draws the chosen threshold's risk exceeds ε at most a δ share of the time,
where choosing on the empirical calibration risk alone exceeds it far more often)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweet.exits import EXIT_RULES, calibrated_probs, simulate
from sweet.risk import (
    RISKS,
    betting_bets,
    betting_log_wealth,
    betting_upper_bound,
    binomial_p_value,
    certifies,
    clopper_pearson_upper,
    common_reference,
    common_target_rows,
    conservative_order,
    fixed_sequence,
    risk_control_rows,
    upper_bound,
)


def _accuracy(names: list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((preds == labels).mean())}


# ---------------------------------------------------------------------------------------------- arithmetic
def test_binomial_test_and_clopper_pearson_by_hand() -> None:
    assert binomial_p_value(0, 100, 0.02) == pytest.approx(0.98 ** 100, rel=1e-12)
    by_hand = 0.9 ** 50 + 50 * 0.1 * 0.9 ** 49 + 1225 * 0.1 ** 2 * 0.9 ** 48
    assert binomial_p_value(2, 50, 0.1) == pytest.approx(by_hand, rel=1e-12)
    # no loss in n: the bound solves (1 − r)^n = δ
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-10)
    assert clopper_pearson_upper(7, 7, 0.05) == 1.0
    # the bound is where the p-value crosses δ
    r = clopper_pearson_upper(3, 200, 0.05)
    assert binomial_p_value(3, 200, r) == pytest.approx(0.05, rel=1e-8)


def test_betting_wealth_by_hand() -> None:
    losses, delta = np.array([0.0, 1.0, -1.0]), 0.5  # range [−1, 1]: prior mean 0, prior variance 1
    # μ̂_1 = 0/2, μ̂_2 = 1/3; σ̂²_1 = (1 + 0²)/2, σ̂²_2 = (1 + 0 + (2/3)²)/3 = 13/27; bets use σ̂²_{j−1}
    nu = [min(1.0, math.sqrt(2 * math.log(2) / (3 * s2))) for s2 in (1.0, 0.5, 13 / 27)]
    np.testing.assert_allclose(betting_bets(losses, delta, -1.0, 1.0), nu, rtol=1e-12)
    r = 0.25
    wealth = np.cumprod([1 - nu[0] * (0 - r), 1 - nu[1] * (1 - r), 1 - nu[2] * (-1 - r)])
    assert betting_log_wealth(losses, r, delta, -1.0, 1.0) == pytest.approx(math.log(wealth.max()), rel=1e-12)
    # the bound is where the maximal wealth reaches 1/δ
    ucb = betting_upper_bound(losses, delta, -1.0, 1.0)
    assert betting_log_wealth(losses, ucb, delta, -1.0, 1.0) == pytest.approx(math.log(2), abs=1e-9)


def test_all_zero_losses_certify_once_n_is_large_enough() -> None:
    # with every loss 0 and bets at their cap (1/hi = 1), wealth grows like (1 + ε)^n: certified iff it reaches 1/δ
    risk = RISKS["disagreement"]
    assert certifies(risk, np.zeros(700), 0.005, 0.05)  # binomial: 0.995^700 = 0.030 ≤ 0.05
    assert not certifies(risk, np.zeros(500), 0.005, 0.05)  # 0.995^500 = 0.082


@pytest.mark.parametrize("risk_name", ["disagreement", "accuracy-drop"])
def test_certified_exactly_when_the_upper_bound_is_within_epsilon(risk_name: str) -> None:
    risk = RISKS[risk_name]
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(50, 600))
        rate = rng.uniform(0, 0.15)
        if risk.binary:
            losses = (rng.uniform(size=n) < rate).astype(float)
        else:
            losses = rng.choice([-1.0, 0.0, 1.0], size=n, p=[rate / 3, 1 - rate, 2 * rate / 3])
        bound = upper_bound(risk, losses, 0.05)
        assert bound >= losses.mean() - 1e-12  # never below what was measured
        for epsilon in (0.005, 0.01, 0.02, 0.05, 0.1):
            if abs(bound - epsilon) > 1e-9:
                assert certifies(risk, losses, epsilon, 0.05) == (bound <= epsilon), (trial, epsilon)


def test_fixed_sequence_stops_at_the_first_failure_and_tests_nothing_after_it() -> None:
    assert fixed_sequence([True, True, False, True]) == 1
    assert fixed_sequence([False, True]) == -1
    assert fixed_sequence([True, True]) == 1
    seen: list[int] = []

    def test(i: int) -> bool:
        seen.append(i)
        return i < 3

    assert fixed_sequence(test, 10) == 2
    assert seen == [0, 1, 2, 3]


def test_conservative_order_starts_where_the_rule_never_fires() -> None:
    grid = np.array([0.5, 0.75, 1.0])
    np.testing.assert_array_equal(conservative_order(EXIT_RULES["confidence"], grid), [1.0, 0.75, 0.5])
    np.testing.assert_array_equal(conservative_order(EXIT_RULES["entropy"], grid), [0.5, 0.75, 1.0])


# ---------------------------------------------------------------------------------------------- per run
def synthetic_logits(n: int, seed: int, exits: int = 3) -> dict[str, np.ndarray]:
    """Exits that get better with depth and whose confidence tracks correctness: risk falls as the threshold
    rises. Exit k's margin of the true class: a_k + easiness + noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    easiness = rng.normal(size=n)
    margins = np.stack([a + 1.5 * easiness + 0.7 * rng.normal(size=n) for a in (0.3, 1.0, 1.8)[:exits]])
    logits = np.zeros((exits, n, 2), dtype=np.float32)
    logits[:, :, 1] = margins * np.where(labels == 1, 1.0, -1.0)
    layers = np.arange(1, exits + 1) * 2
    return {"exit_logits": logits, "temperatures": np.ones(exits, dtype=np.float32), "labels": labels,
            "lengths": np.full(n, 10), "exit_layers": layers, "layer_costs": layers, "method": np.array("ee"),
            "hidden_size": np.array(64), "intermediate_size": np.array(128), "num_labels": np.array(2)}


def test_chosen_threshold_passes_every_test_before_it_and_the_next_one_fails() -> None:
    from sweet.curves import threshold_grid

    calibration, evaluation = synthetic_logits(300, 1), synthetic_logits(600, 2)  # 300: ε = 0.005 cannot pass
    rows = risk_control_rows(calibration, evaluation, ["accuracy"], "accuracy", _accuracy, delta=0.1)
    rules = [name for name, rule in EXIT_RULES.items() if not rule.needs_lte]  # no learned-exit scores here
    assert len(rows) == len(rules) * 2 * 4  # every rule × 2 risks × 4 ε
    assert rows["certified"].any() and not rows["certified"].all()
    probs = calibrated_probs(calibration["exit_logits"])
    preds = probs.argmax(axis=-1)
    order = np.random.default_rng(0).permutation(300)
    for _, row in rows.iterrows():
        rule, risk = EXIT_RULES[row["strategy"]], RISKS[row["risk"]]
        grid, _ = threshold_grid(row["strategy"], 2, 3, 11, 101)
        sequence = conservative_order(rule, grid)

        def losses(t: float, risk=risk, rule=rule) -> np.ndarray:
            return risk.loss(preds, calibration["labels"], simulate(rule, probs, None, t))[order]

        passed = [certifies(risk, losses(t), row["epsilon"], row["delta"]) for t in sequence]
        k = row["n_certified"]
        assert all(passed[:k]) and (k == len(sequence) or not passed[k])
        if row["certified"]:
            assert row["threshold"] == sequence[k - 1]
            assert row["calibration_risk"] <= row["upper_bound"] + 1e-12
            assert row["upper_bound"] <= row["epsilon"]
        else:
            assert k == 0 and row["threshold"] == rule.never_fires and "not certified" in row["why"]
            assert row["eval_risk"] == 0 and row["eval_speedup"] == 1.0  # the last exit, for every example
    # a looser tolerance never certifies a slower threshold (fixed sequence: its prefix only grows)
    for _, group in rows.groupby(["strategy", "risk"]):
        assert group.sort_values("epsilon")["n_certified"].is_monotonic_increasing


def hand_made_logits() -> dict[str, np.ndarray]:
    """200 examples of class 1, two exits (layers 1 and 2). 188 easy: exit 1 right at confidence σ(3) = 0.953, the
    last right; 10 overconfident: exit 1 wrong at σ(2) = 0.881, the last right; 2 hard: both wrong, exit 1 at
    σ(1) = 0.731. The error is 2/200 at every confidence threshold above 0.881 (the easy ones leave early, right)
    and 12/200 from 0.881 down."""
    logits = np.zeros((2, 200, 2), dtype=np.float32)
    logits[0, :188, 1], logits[1, :188, 1] = 3.0, 5.0
    logits[0, 188:198, 0], logits[1, 188:198, 1] = 2.0, 5.0
    logits[0, 198:, 0], logits[1, 198:, 0] = 1.0, 3.0
    return {"exit_logits": logits, "temperatures": np.ones(2, dtype=np.float32), "labels": np.ones(200, dtype=int),
            "exit_layers": np.array([1, 2]), "layer_costs": np.array([1, 2])}


def test_error_risk_certifies_the_fastest_threshold_that_keeps_the_error_rate_by_hand() -> None:
    from scipy import stats

    from sweet.curves import threshold_grid

    logits = hand_made_logits()
    rows = risk_control_rows(logits, logits, ["accuracy"], "accuracy", _accuracy, ["error"], [0.005, 0.05])
    rows = rows[rows["strategy"] == "confidence"].set_index("epsilon")
    grid, _ = threshold_grid("confidence", 2, 2, 11, 101)
    # ε = 0.05: P(Bin(200, 0.05) ≤ 2) = 0.0023 passes and P(Bin(200, 0.05) ≤ 12) = 0.72 fails, so the choice is
    # the lowest grid threshold above exit 1's confidence on the overconfident ten
    assert stats.binom.cdf(2, 200, 0.05) <= 0.05 < stats.binom.cdf(12, 200, 0.05)
    row = rows.loc[0.05]
    assert row["certified"] and row["threshold"] == grid[grid > 1 / (1 + np.exp(-2.0))].min()
    assert row["calibration_risk"] == 2 / 200 and row["eval_risk"] == 2 / 200
    assert row["upper_bound"] == pytest.approx(stats.beta.ppf(0.95, 3, 198), rel=1e-12)
    assert row["eval_speedup"] == pytest.approx(2 / ((188 * 1 + 12 * 2) / 200), rel=1e-12)
    assert row["eval_score"] == 198 / 200
    # ε = 0.005 is below the last exit's own error (0.01): nothing is tested, the last exit answers everything
    row = rows.loc[0.005]
    assert not row["certified"] and row["n_certified"] == 0 and row["eval_speedup"] == 1.0
    assert row["calibration_risk"] == 0.01 and row["eval_risk"] == 0.01
    assert "the last exit alone has calibration risk 0.01 > ε = 0.005" in row["why"]


def test_common_target_is_the_reference_less_the_offset_and_a_weaker_last_exit_is_not_certified() -> None:
    logits = hand_made_logits()  # its last exit: 198 of 200 right
    assert common_reference({"ee": 0.99, "sweet": 0.995, "mm": 0.995}) == ("sweet", 0.995)  # ties: first given
    rows = common_target_rows(logits, logits, "sweet", 0.995, ["accuracy"], "accuracy", _accuracy,
                              offsets=[0.0, 0.045])
    rows = rows[rows["strategy"] == "confidence"].set_index("offset")
    assert rows.loc[0.045, "target_accuracy"] == pytest.approx(0.95, abs=1e-15)
    assert rows.loc[0.045, "epsilon"] == pytest.approx(0.05, abs=1e-15)
    # ε = 0.05 as in the test above: the same certified threshold
    assert rows.loc[0.045, "certified"] and rows.loc[0.045, "calibration_risk"] == 0.01
    assert rows.loc[0.045, "why"].startswith("target accuracy 0.9500 = reference 0.9950 (sweet) − 0.045; certified")
    row = rows.loc[0.0]
    assert row["last_exit_accuracy"] == 0.99 and row["target_accuracy"] == 0.995
    assert not row["certified"] and row["threshold"] == np.inf and row["eval_speedup"] == 1.0
    assert "own last exit has calibration accuracy 0.9900, below the target" in row["why"]


# ---------------------------------------------------------------------------------------------- validity
@pytest.mark.parametrize("risk_name,epsilon", [("disagreement", 0.05), ("accuracy-drop", 0.03), ("error", 0.17)])
def test_risk_control_holds_over_calibration_draws_where_the_naive_choice_does_not(
    risk_name: str, epsilon: float
) -> None:
    """Population: 20,000 synthetic examples (the distribution itself). Each of 600 draws takes 400 calibration
    examples from it (i.i.d.), chooses the confidence threshold, and reads the threshold's true risk off the
    population. Risk control exceeds ε in at most δ of the draws (plus 3 binomial standard errors); choosing
    the fastest threshold whose calibration risk is ≤ ε exceeds it in far more."""
    risk, delta, draws, n_cal = RISKS[risk_name], 0.1, 600, 400
    population = synthetic_logits(20_000, 7)
    probs = calibrated_probs(population["exit_logits"])
    preds = probs.argmax(axis=-1)
    rule = EXIT_RULES["confidence"]
    sequence = conservative_order(rule, np.linspace(0.5, 1.0, 51))
    losses = np.stack([risk.loss(preds, population["labels"], simulate(rule, probs, None, t)) for t in sequence])
    true_risk = losses.mean(axis=1)
    assert true_risk[0] < epsilon < true_risk[-1]  # the question is not trivial either way
    rng = np.random.default_rng(11)
    controlled, naive = [], []
    for _ in range(draws):
        sample = losses[:, rng.integers(0, losses.shape[1], size=n_cal)]
        last = fixed_sequence([certifies(risk, row, epsilon, delta) for row in sample])
        controlled.append(true_risk[last] if last >= 0 else 0.0)
        ok = np.flatnonzero(sample.mean(axis=1) <= epsilon)
        naive.append(true_risk[ok.max()] if ok.size else 0.0)
    slack = 3 * math.sqrt(delta * (1 - delta) / draws)
    controlled_violations = float(np.mean(np.asarray(controlled) > epsilon))
    naive_violations = float(np.mean(np.asarray(naive) > epsilon))
    assert controlled_violations <= delta + slack
    assert naive_violations > delta + slack
    assert naive_violations > 2 * controlled_violations


def test_the_common_target_read_off_the_calibration_split_still_holds_over_draws() -> None:
    """The common target ε̂ = 1 − (best last-exit accuracy among the methods − offset) is read off the very
    calibration draw it is then tested on, which Learn-then-Test's guarantee does not cover by itself. Two methods
    on the same 10,000 examples (the second's exits 0.2 weaker); each of 200 draws takes 1,000 calibration
    examples, computes ε̂ as the aggregation does, skips a method whose last exit is above it, and certifies by
    fixed-sequence testing: the chosen threshold's true error exceeds ε̂ in at most δ of the draws (plus 3
    binomial standard errors), and both methods are certified in some draws, so the check is not empty."""
    risk, rule, delta, offset, draws, n_cal = RISKS["error"], EXIT_RULES["confidence"], 0.1, 0.05, 200, 1000
    sequence = conservative_order(rule, np.linspace(0.5, 1.0, 26))
    rng = np.random.default_rng(7)
    labels, easiness = rng.integers(0, 2, size=10_000), rng.normal(size=10_000)
    losses, last = [], []
    for shift in (0.0, -0.2):
        margins = np.stack([a + shift + 1.5 * easiness + 0.7 * rng.normal(size=labels.size) for a in (0.3, 1.0, 1.8)])
        logits = np.zeros((3, labels.size, 2), dtype=np.float32)
        logits[:, :, 1] = margins * np.where(labels == 1, 1.0, -1.0)
        probs = calibrated_probs(logits)
        preds = probs.argmax(axis=-1)
        losses.append(np.stack([risk.loss(preds, labels, simulate(rule, probs, None, t)) for t in sequence]))
        last.append((preds[-1] != labels).astype(float))
    true_risk = [m.mean(axis=1) for m in losses]
    certified, violations = np.zeros(2), np.zeros(2)
    for _ in range(draws):
        sample = rng.integers(0, labels.size, size=n_cal)
        epsilon = 1 - (max(1 - m[sample].mean() for m in last) - offset)
        for method in range(2):
            if last[method][sample].mean() > epsilon:
                continue
            chosen = fixed_sequence(lambda i, m=method, s=sample, e=epsilon: certifies(risk, losses[m][i, s], e, delta),
                                    len(sequence))
            if chosen >= 0:
                certified[method] += 1
                violations[method] += true_risk[method][chosen] > epsilon
    assert (certified > 0.2 * draws).all()
    assert (violations / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)).all()
