"""Exit rules, threshold grids, speed accounting and curves on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweet.cost import EncoderShape, flops_fraction, layer_costs, layer_flops, layer_fraction
from sweet.curves import curve_rows, exit_rows, threshold_grid
from sweet.exits import EXIT_RULES, calibrated_probs, first_firing_exit, oracle_exits, simulate


def _probs_from_max(p: list[list[float]]) -> np.ndarray:
    """Binary probabilities [K, N, 2] with class 0 at probability p[k][n]."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([p, 1 - p], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# threshold grids
def test_reference_thresholds_binary():
    grid = EXIT_RULES["confidence"].thresholds(2, 4, 11)
    assert np.array_equal(grid, np.linspace(0.5, 1, 11))
    np.testing.assert_allclose(grid, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0], rtol=0, atol=1e-15)
    assert grid[0] == 0.5 and grid[-1] == 1.0


@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_reference_thresholds_any_num_labels(num_labels):
    grid = EXIT_RULES["confidence"].thresholds(num_labels, 4, 11)
    assert np.array_equal(grid, np.linspace(1 / num_labels, 1, 11))
    assert len(grid) == 11
    assert np.array_equal(EXIT_RULES["entropy"].thresholds(num_labels, 4, 11), np.linspace(0, 1, 11))
    assert np.array_equal(EXIT_RULES["learned"].thresholds(num_labels, 4, 11), np.linspace(0, 1, 11))
    assert np.array_equal(EXIT_RULES["patience"].thresholds(num_labels, 4, 11), [0, 1, 2, 3])
    assert np.array_equal(EXIT_RULES["softmax_diff"].thresholds(num_labels, 4, 11), np.linspace(0, 1, 11))


def test_threshold_grid_binary_confidence_marks_the_reference_points():
    grid, is_reference = threshold_grid("confidence", 2, 4, 11, 101)
    assert len(grid) == 101
    assert is_reference.sum() == 11
    np.testing.assert_allclose(grid[is_reference], np.linspace(0.5, 1, 11), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("rule", "num_labels"), [("entropy", 2), ("learned", 2), ("confidence", 3)])
def test_threshold_grid_has_exactly_eleven_reference_points_without_duplicates(rule, num_labels):
    grid, is_reference = threshold_grid(rule, num_labels, 4, 11, 101)
    assert is_reference.sum() == 11
    assert np.diff(grid).min() > 1e-9  # no threshold appears twice
    assert len(grid) == 101


# ----------------------------------------------------------------------------------------------------------------
# rules on hand-computed examples
def test_calibrated_probs_divides_by_each_exits_temperature():
    logits = np.array([[[2.0, 0.0]], [[2.0, 0.0]]])
    probs = calibrated_probs(logits, np.array([1.0, 2.0]))
    assert probs[0, 0, 0] == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-15)
    assert probs[1, 0, 0] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-15)
    np.testing.assert_allclose(calibrated_probs(logits), calibrated_probs(logits, np.ones(2)), rtol=0, atol=0)


def test_confidence_rule():
    # 3 exits x 4 examples, max probability of each
    probs = _probs_from_max([[0.9, 0.6, 0.3, 0.55], [0.95, 0.8, 0.52, 0.7], [0.6, 0.6, 0.6, 0.99]])
    rule = EXIT_RULES["confidence"]
    fires = rule.fires(probs, None, 0.75)
    # example 2's max probability is 1 - 0.3 = 0.7 at exit 1
    assert fires.tolist() == [[True, False, False, False], [True, True, False, False], [False, False, False, True]]
    assert simulate(rule, probs, None, 0.75).tolist() == [0, 1, 2, 2]
    assert simulate(rule, probs, None, 0.5).tolist() == [0, 0, 0, 0]  # max prob ≥ 1/C always
    assert simulate(rule, probs, None, 0.9).tolist() == [0, 2, 2, 2]
    assert simulate(rule, probs, None, 0.92).tolist() == [1, 2, 2, 2]
    # ≥, not >
    assert simulate(rule, _probs_from_max([[0.75], [0.1]]), None, 0.75).tolist() == [0]


def test_entropy_rule_normalised():
    rule = EXIT_RULES["entropy"]
    # normalised entropy of (0.9, 0.1): -(0.9 ln 0.9 + 0.1 ln 0.1) / ln 2
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert h == pytest.approx(0.4690, abs=1e-4)
    probs = _probs_from_max([[0.9, 0.5, 1.0], [0.5, 0.9, 0.5]])
    assert rule.fires(probs, None, h + 1e-9).tolist() == [[True, False, True], [False, True, False]]
    assert rule.fires(probs, None, h - 1e-9).tolist() == [[False, False, True], [False, False, False]]
    assert simulate(rule, probs, None, h + 1e-9).tolist() == [0, 1, 0]
    assert simulate(rule, probs, None, 0.0).tolist() == [1, 1, 0]  # only a one-hot (entropy 0) exits early
    assert simulate(rule, probs, None, 1.0).tolist() == [0, 0, 0]  # uniform has normalised entropy 1
    # three classes: uniform has normalised entropy exactly 1, a peaked one much less
    three = np.array([[[1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]]])
    h3 = -(0.98 * math.log(0.98) + 2 * 0.01 * math.log(0.01)) / math.log(3)
    assert EXIT_RULES["entropy"].fires(three, None, h3 + 1e-9).tolist() == [[False, True]]
    assert EXIT_RULES["entropy"].fires(three, None, 1 - 1e-9).tolist() == [[False, True]]


def test_softmax_diff_rule_calm():
    rule = EXIT_RULES["softmax_diff"]
    # 2 exits x 4 examples over 3 classes; top-1 − top-2 by hand:
    probs = np.array([
        [[0.5, 0.4, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]],  # 0.1, 0.5, 0.7, 0.01
        [[0.9, 0.05, 0.05], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2], [0.45, 0.1, 0.45]],  # 0.85, 0.1, 0.4, 0.0
    ])
    assert rule.fires(probs, None, 0.45).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert simulate(rule, probs, None, 0.45).tolist() == [1, 0, 0, 1]
    assert simulate(rule, probs, None, 0.75).tolist() == [1, 1, 1, 1]
    assert simulate(rule, probs, None, 0.0).tolist() == [0, 0, 0, 0]  # a difference is never negative
    # ≥, not >; and a tie between the two best classes (0.45, 0.45) has difference exactly 0
    assert rule.fires(probs, None, 0.5 - 1e-12)[0].tolist() == [False, True, True, False]
    assert rule.fires(probs[1:], None, 1e-12).tolist() == [[True, True, True, False]]
    # it is not max-probability: example 1 at exit 1 (max 0.7) fires at 0.45, while example 3 at exit 2 (max 0.45,
    # but a tie) never does; with two classes the difference is 2·max − 1
    binary = _probs_from_max([[0.9, 0.6, 0.3]])
    assert rule.fires(binary, None, 0.8 - 1e-12).tolist() == [[True, False, False]]
    np.testing.assert_allclose(
        rule.fires(binary, None, 0.4 - 1e-12), EXIT_RULES["confidence"].fires(binary, None, 0.7 - 1e-12))
    # the decision at exit k uses exits 1..k only (causal)
    for k in range(2):
        assert np.array_equal(rule.fires(probs[: k + 1], None, 0.45)[-1], rule.fires(probs, None, 0.45)[k])


def test_patience_rule_pabee():
    rule = EXIT_RULES["patience"]
    # predictions per exit (5 exits) for 4 examples, built from probabilities
    preds = np.array([[0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    probs = np.where(preds[..., None] == 0, [0.8, 0.2], [0.3, 0.7])
    # streaks of equal consecutive predictions:
    # ex0: 0,1,2,0,1  ex1: 0,0,1,2,3  ex2: 0,0,0,1,2  ex3: 0,1,0,1,2
    assert simulate(rule, probs, None, 0).tolist() == [0, 0, 0, 0]
    assert simulate(rule, probs, None, 1).tolist() == [1, 2, 3, 1]
    assert simulate(rule, probs, None, 2).tolist() == [2, 3, 4, 4]
    assert simulate(rule, probs, None, 3).tolist() == [4, 4, 4, 4]  # last exit answers when patience is never met
    # the decision at exit k uses exits 1..k only (causal)
    for t in range(4):
        full = rule.fires(probs, None, t)
        for k in range(5):
            assert np.array_equal(rule.fires(probs[: k + 1], None, t)[-1], full[k])


def test_learned_rule():
    rule = EXIT_RULES["learned"]
    assert rule.needs_lte
    lte = np.array([[0.2, 0.7, 0.5], [0.9, 0.1, 0.49], [0.3, 0.3, 0.3]])
    probs = _probs_from_max([[0.99] * 3] * 3)  # the learned rule ignores the exit's confidence
    assert simulate(rule, probs, lte, 0.5).tolist() == [1, 0, 0]
    assert simulate(rule, probs, lte, 0.6).tolist() == [1, 0, 2]
    assert simulate(rule, probs, lte, 0.95).tolist() == [2, 2, 2]
    assert simulate(rule, probs, lte, 0.0).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="learned-to-exit"):
        simulate(rule, probs, None, 0.5)


@pytest.mark.parametrize("rule_name", ["confidence", "learned", "softmax_diff"])
def test_last_exit_always_answers(rule_name):
    rng = np.random.default_rng(0)
    probs = calibrated_probs(rng.normal(size=(3, 50, 4)) * 5)
    lte = rng.uniform(size=(3, 50))
    exits = simulate(EXIT_RULES[rule_name], probs, lte, 1.01)
    assert exits.tolist() == [2] * 50
    assert simulate(EXIT_RULES["entropy"], probs, lte, -0.01).tolist() == [2] * 50


def test_first_firing_exit():
    fires = np.array([[False, True, False, False], [True, True, False, False], [False, False, True, False]])
    before = fires.copy()
    assert first_firing_exit(fires).tolist() == [1, 0, 2, 2]
    assert np.array_equal(fires, before)  # the caller's array is not modified
    assert first_firing_exit(np.zeros((3, 2), dtype=bool)).tolist() == [2, 2]
    assert first_firing_exit(np.ones((1, 3), dtype=bool)).tolist() == [0, 0, 0]


def test_oracle_exits():
    # predictions per exit: ex0 right at exit 2, ex1 right at 1, ex2 never right, ex3 right only at 3
    probs = _probs_from_max([[0.2, 0.9, 0.8, 0.7], [0.7, 0.2, 0.9, 0.8], [0.9, 0.1, 0.6, 0.2]])
    labels = np.array([0, 0, 1, 1])
    assert oracle_exits(probs, labels).tolist() == [1, 0, 0, 2]


# ----------------------------------------------------------------------------------------------------------------
# cost
def test_layer_fraction_and_speedup_hand_case():
    costs = layer_costs([1, 4, 6], "ee")
    assert costs.tolist() == [1, 4, 6]
    assert layer_costs([1, 4, 6], "sweet").tolist() == [1, 4, 6]
    exit_index = np.array([0, 1, 2, 2])
    fraction = layer_fraction(exit_index, costs, 6)
    assert fraction == pytest.approx((1 + 4 + 6 + 6) / (4 * 6), abs=1e-15)
    assert 1 / fraction == pytest.approx(24 / 17, abs=1e-15)
    assert layer_fraction(np.zeros(5, dtype=int), costs, 6) == pytest.approx(1 / 6)


def test_multimodel_cumulative_cost():
    assert layer_costs([1, 4, 6, 12], "mm").tolist() == [1, 5, 11, 23]
    costs = layer_costs([1, 4, 6, 12], "mm")
    # everybody at the last member: MM is slower than one full model (speedup 12/23)
    fraction = layer_fraction(np.full(3, 3), costs, 12)
    assert fraction == pytest.approx(23 / 12)
    assert layer_fraction(np.array([0, 1, 2, 3]), costs, 12) == pytest.approx((1 + 5 + 11 + 23) / 48)


def test_flops_fraction_hand_case():
    d, f, c = 4, 8, 2
    shape = EncoderShape(hidden_size=d, intermediate_size=f, num_labels=c)
    lengths = np.array([3, 5])
    exit_index = np.array([0, 1])
    exit_layers = np.array([1, 2])

    # the formula from sweet/cost.py's docstring, by hand
    def layer(n):  # 2·n·(4d² + 2df) + 4·n²·d
        return 2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d

    assert layer(3) == 912 and layer(5) == 1680
    np.testing.assert_array_equal(layer_flops(lengths, shape), [912, 1680])

    def embed(n):  # 7·n·d
        return 7 * n * d

    head = 2 * d * d + 2 * d * c  # pooler + classifier = 48
    full = (embed(3) + 2 * layer(3) + head) + (embed(5) + 2 * layer(5) + head)  # 1956 + 3548
    assert full == 5504
    # EE: one embedding, the layers up to the exit, and every head on the way
    ee = (embed(3) + 1 * layer(3) + 1 * head) + (embed(5) + 2 * layer(5) + 2 * head)
    assert ee == 1044 + 3596
    assert flops_fraction(exit_index, lengths, exit_layers, "ee", shape) == pytest.approx(ee / full, rel=1e-12)
    assert flops_fraction(exit_index, lengths, exit_layers, "sweet", shape) == pytest.approx(ee / full, rel=1e-12)
    # MM: member 2 pays embeddings again and the 1 + 2 layers of both members
    mm = (embed(3) + 1 * layer(3) + head) + (2 * embed(5) + 3 * layer(5) + 2 * head)
    assert mm == 1044 + 5416
    assert flops_fraction(exit_index, lengths, exit_layers, "mm", shape) == pytest.approx(mm / full, rel=1e-12)
    # everyone at the last exit of a one-exit model is exactly the full model
    assert flops_fraction(np.zeros(2, dtype=int), lengths, np.array([2]), "ee", shape) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------------
# curves
def _accuracy(names, preds, labels):
    return {"accuracy": float(np.mean(np.asarray(preds) == np.asarray(labels)))}


def _logits_dict(method: str = "ee") -> dict[str, np.ndarray]:
    # exit 1: max probs 0.9 (right), 0.6 (wrong), 0.8 (right), 0.55 (wrong) -> 2/4 right
    # exit 2: all four right
    p1 = np.array([0.9, 0.4, 0.8, 0.55])  # probability of class 0
    p2 = np.array([0.7, 0.65, 0.95, 0.2])
    labels = np.array([0, 0, 0, 1])
    logits = np.stack([np.stack([np.log(p), np.log(1 - p)], axis=-1) for p in (p1, p2)]).astype(np.float32)
    exit_layers = np.array([2, 4])
    return {
        "exit_logits": logits,
        "temperatures": np.ones(2, dtype=np.float32),
        "labels": labels,
        "lengths": np.array([5, 7, 3, 4]),
        "exit_layers": exit_layers,
        "layer_costs": layer_costs(exit_layers, method),
        "method": np.array(method),
        "hidden_size": np.array(8),
        "intermediate_size": np.array(16),
        "num_labels": np.array(2),
    }


def test_curve_rows_hand_case():
    logits = _logits_dict()
    frame = curve_rows(logits, ["accuracy"], "accuracy", _accuracy, n=11, dense=101)
    conf = frame[frame.strategy == "confidence"].set_index("threshold")
    # no learned scores stored
    assert set(frame.strategy) == {"confidence", "entropy", "patience", "softmax_diff", "oracle"}
    # τ = 0.5: everybody leaves at exit 1 (layer 2 of 4)
    row = conf.loc[0.5]
    assert row.score == pytest.approx(0.5) and row.speedup == pytest.approx(2.0)
    assert row.layer_fraction == pytest.approx(0.5) and row.metric == "accuracy"
    assert row.reference_threshold == 1
    # τ = 0.75: examples 0 and 2 (max prob 0.9, 0.8) leave at exit 1, the others at exit 2
    row = conf.loc[np.linspace(0.5, 1, 11)[5]]
    assert row.score == pytest.approx(1.0)
    assert row.layer_fraction == pytest.approx((2 + 4 + 2 + 4) / 16)
    assert row.speedup == pytest.approx(16 / 12)
    assert row.reference_threshold == 1
    # τ = 0.56 (dense only): exit 1's 0.55 stays, 0.6 leaves -> examples 0,1,2 at exit 1
    row = conf.loc[np.linspace(0.5, 1, 101)[12]]
    assert row.reference_threshold == 0
    assert row.score == pytest.approx(0.75)
    assert row.layer_fraction == pytest.approx((2 + 2 + 2 + 4) / 16)
    shape = EncoderShape(8, 16, 2)
    assert row.flops_fraction == pytest.approx(flops_fraction(np.array([0, 0, 0, 1]), logits["lengths"], logits["exit_layers"], "ee", shape))
    # τ = 1: nobody is that sure, the last exit answers everything
    row = conf.loc[1.0]
    assert row.score == pytest.approx(1.0) and row.speedup == pytest.approx(1.0) and row.flops_fraction > 1.0
    # softmax difference, binary: 2·max − 1 ≥ 0.5 ⟺ max ≥ 0.75, the confidence row above
    diff = frame[frame.strategy == "softmax_diff"].set_index("threshold").loc[0.5]
    assert diff.score == pytest.approx(1.0) and diff.layer_fraction == pytest.approx((2 + 4 + 2 + 4) / 16)
    assert diff.reference_threshold == 1
    # the 11 reference thresholds are marked
    assert np.array_equal(np.sort(conf.index[conf.reference_threshold == 1].to_numpy()), np.linspace(0.5, 1, 11))
    # oracle: earliest correct exit -> 0, 2 at exit 1; 1, 3 at exit 2 -> everything right
    oracle = frame[frame.strategy == "oracle"]
    assert len(oracle) == 1
    assert oracle.iloc[0].score == pytest.approx(1.0)
    assert oracle.iloc[0].layer_fraction == pytest.approx(12 / 16)
    assert oracle.iloc[0].reference_threshold == 0 and np.isnan(oracle.iloc[0].threshold)
    # patience: integers 0 and 1 (both reference); 0 = everybody at exit 1
    pat = frame[frame.strategy == "patience"].set_index("threshold")
    assert pat.index.tolist() == [0.0, 1.0]
    assert pat.loc[0.0].speedup == pytest.approx(2.0)
    assert pat.loc[1.0].speedup == pytest.approx(1.0)
    assert set(pat.reference_threshold) == {1}
    for column in ("strategy", "threshold", "score", "metric", "speedup", "layer_fraction", "flops_fraction"):
        assert column in frame.columns


def test_curve_rows_mm_and_learned():
    logits = _logits_dict("mm")
    logits["lte_scores"] = np.array([[0.9, 0.2, 0.6, 0.1], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    frame = curve_rows(logits, ["accuracy"], "accuracy", _accuracy, n=11, dense=11)
    learned = frame[frame.strategy == "learned"].set_index("threshold")
    assert len(learned) == 11
    row = learned.loc[0.5]  # examples 0 and 2 leave at member 1: costs 2, 6, 2, 6 of 4 layers each
    assert row.layer_fraction == pytest.approx((2 + 6 + 2 + 6) / 16)
    assert row.score == pytest.approx(1.0)
    assert frame[frame.strategy == "confidence"].set_index("threshold").loc[1.0].speedup == pytest.approx(4 / 6)


def test_curve_rows_uses_temperatures():
    logits = _logits_dict()
    hot = dict(logits, temperatures=np.array([100.0, 1.0], dtype=np.float32))
    # with T=100 exit 1 is never confident above 0.55
    row = curve_rows(hot, ["accuracy"], "accuracy", _accuracy, n=11, dense=11)
    row = row[row.strategy == "confidence"].set_index("threshold").loc[np.linspace(0.5, 1, 11)[1]]
    assert row.layer_fraction == pytest.approx(1.0)


def test_exit_rows():
    frame = exit_rows(_logits_dict(), ["accuracy"], "accuracy", _accuracy)
    assert frame.exit.tolist() == [1, 2]
    assert frame.exit_layer.tolist() == [2, 4]
    assert frame.score.tolist() == pytest.approx([0.5, 1.0])


def test_curve_rows_mark_exactly_eleven_reference_rows_per_rule():
    logits = _logits_dict()
    logits["lte_scores"] = np.array([[0.9, 0.2, 0.6, 0.1], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    frame = curve_rows(logits, ["accuracy"], "accuracy", _accuracy, n=11, dense=101)
    for strategy in ("confidence", "entropy", "learned", "softmax_diff"):
        rows = frame[frame.strategy == strategy]
        assert rows.reference_threshold.sum() == 11, strategy
        assert len(rows) == 101, strategy


# ----------------------------------------------------------------------------------------------------------------
# the online runner's last-exit decision
@pytest.mark.parametrize("name", sorted(EXIT_RULES))
@pytest.mark.parametrize("num_labels", [2, 3, 7])
def test_fires_at_last_equals_the_last_row_of_fires(name, num_labels):
    """sweet.infer asks ``fires_at_last`` at exit k; it must be exactly ``fires`` on exits 1..k's last row."""
    rule = EXIT_RULES[name]
    rng = np.random.default_rng([sorted(EXIT_RULES).index(name), num_labels])
    for num_exits in range(1, 6):
        # Sharp and flat logits, and few classes' worth of repeated predictions (patience's streaks), plus exact
        # ties between classes (argmax / partition tie-breaking).
        logits = rng.normal(size=(num_exits, 50, num_labels)) * rng.choice([0.1, 1.0, 8.0], size=(num_exits, 50, 1))
        logits[:, :5] = 0.0
        probs = calibrated_probs(logits, rng.uniform(0.5, 2.0, size=num_exits))
        lte = rng.uniform(size=(num_exits, 50)).astype(np.float32)
        grid = rule.thresholds(num_labels, num_exits, 11)
        for threshold in [*grid, *rng.uniform(grid.min(), grid.max(), size=5)]:
            fires = rule.fires(probs, lte, threshold)
            assert np.array_equal(rule.fires_at_last(probs, lte, threshold), fires[-1]), (num_exits, threshold)
            for k in range(num_exits):  # the runner's view at exit k: exits 1..k only
                assert np.array_equal(rule.fires_at_last(probs[: k + 1], lte[: k + 1], threshold),
                                      rule.fires(probs[: k + 1], lte[: k + 1], threshold)[-1])


def test_every_rule_has_a_last_exit_decision():
    assert all(rule.fires_last is not None for rule in EXIT_RULES.values())


# ----------------------------------------------------------------------------------------------------------------
# the compiled runner's device version (sweet.compiled decides inside each segment)
@pytest.mark.parametrize("name", sorted(EXIT_RULES))
@pytest.mark.parametrize("num_labels", [2, 3, 7])
def test_device_version_equals_the_numpy_rule_exit_by_exit(name, num_labels):
    """``fires_device`` on one exit at a time, carrying its streak and the previous calibrated prediction, gives
    ``fires`` exactly, on the same sharp, flat and tied inputs as above."""
    torch = pytest.importorskip("torch")
    rule = EXIT_RULES[name]
    assert rule.fires_device is not None
    rng = np.random.default_rng([sorted(EXIT_RULES).index(name), num_labels, 1])
    num_exits = 4
    logits = rng.normal(size=(num_exits, 60, num_labels)) * rng.choice([0.1, 1.0, 8.0], size=(num_exits, 60, 1))
    logits[:, :5] = 0.0
    logits[:, 5:20] = logits[:1, 5:20]  # equal predictions at consecutive exits: patience's streaks grow
    probs = calibrated_probs(logits, rng.uniform(0.5, 2.0, size=num_exits))
    lte = rng.uniform(size=(num_exits, 60))
    grid = rule.thresholds(num_labels, num_exits, 11)
    for threshold in [*grid, *rng.uniform(grid.min(), grid.max(), size=5)]:
        expected = rule.fires(probs, lte, threshold)
        streak = previous = torch.zeros(60, dtype=torch.int64)
        for k in range(num_exits):
            p = torch.as_tensor(probs[k])
            fires, streak = rule.fires_device(p, torch.as_tensor(lte[k]), torch.tensor(threshold, dtype=torch.float64),
                                              streak, previous, k == 0)
            previous = p.argmax(dim=-1)
            assert fires.tolist() == expected[k].tolist(), (threshold, k)
