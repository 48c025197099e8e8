"""Risk-controlled exit thresholds: the fastest threshold whose risk is certified on the calibration split.

Given a tolerance ε and a confidence 1 − δ, choose a threshold λ̂ from the calibration split's per-exit logits so
that, over the draw of the calibration split, P(R(λ̂) ≤ ε) ≥ 1 − δ, where R(λ) is the expected per-example loss
of early exit at λ on the distribution the calibration and evaluation examples are drawn from (Learn-then-Test:
Angelopoulos, Bates et al. 2021; for early exit: CALM, Schuster et al., NeurIPS 2022, and Jazbec et al., "Fast
yet Safe: Early-Exiting with Risk Control", NeurIPS 2024).

**Risks** (per example; the first two relative to the run's own last exit, so no labels are needed for
``disagreement``, the third absolute):

* ``disagreement``: 1 when the prediction at the exit taken differs from the last exit's, else 0 (Jazbec et
  al.'s consistency risk, CALM's textual consistency for classification).
* ``accuracy-drop``: [last exit correct] − [exit taken correct] ∈ {−1, 0, 1} (Jazbec et al.'s performance-gap
  risk, unclipped): its mean is the accuracy the early exits lose against the full model. It can be negative
  (an early exit right where the last is wrong), and that is kept: clipping at 0 would bound a larger risk.
* ``error``: 1 when the exit taken is wrong, else 0: its mean is the early-exit policy's error rate itself, so
  every method of a setting can be held to one target (``common_target_rows``), where the two risks above hold
  each method to its own last exit, a lower bar for a method whose last exit is weaker. Unlike them it is not 0
  at the last exit: a run whose last exit alone exceeds ε is not certified and no threshold is tested.

**Bounds.** Each threshold λ is a hypothesis H_λ: R(λ) > ε, rejected (λ *certified*) by a valid test at level δ:

* binary losses (``disagreement``, ``error``): the exact binomial test, p = P(Binomial(n, ε) ≤ k) for k losses among n
  calibration examples. With 0/1 losses the loss count is exactly binomial, so no bound is tighter (Hoeffding–
  Bentkus only adds slack for general [0, 1] losses). Its upper confidence bound is Clopper–Pearson's,
  inf{r : P(Binomial(n, r) ≤ k) ≤ δ} = Beta(1 − δ; k + 1, n − k).
* bounded losses (``accuracy-drop``, range [−1, 1]): Waudby-Smith–Ramdas betting (the WSR bound of RCPS, Bates
  et al. 2021, written for a general range [lo, hi]): wealth K_i(r) = Π_{j ≤ i} (1 − ν_j (ℓ_j − r)) with
  predictable bets ν_j = min(1 / hi, sqrt(2 log(1/δ) / (n σ̂²_{j−1}))), where μ̂_i = (m₀ + Σ_{j≤i} ℓ_j) / (1 + i),
  σ̂²_i = (s₀ + Σ_{j≤i} (ℓ_j − μ̂_j)²) / (1 + i), m₀ = (lo + hi)/2 and s₀ = ((hi − lo)/2)² (with [lo, hi] = [0, 1]
  this is RCPS's bound exactly). Under H: E ℓ ≥ r every factor has conditional mean ≤ 1 and, since ν ≤ 1/hi and
  r ≥ 0, is ≥ 0, so K is a nonnegative supermartingale and Ville's inequality rejects H when max_i K_i(r) ≥ 1/δ.
  Why betting rather than Hoeffding–Bentkus: the accuracy drop is 0 for most examples, and betting adapts to
  that small variance where a range-only bound (which, rescaled to [0, 1], would halve ε) certifies nothing at
  the tolerances that matter. Only the top of the range limits the bet (a loss below r only adds wealth), so
  the range costs nothing at the bottom. Betting needs the examples in an order independent of their losses:
  the calibration split is used in a seeded random permutation (its stored order is sorted by id).
  ``upper_bound`` = inf{r ≥ 0 : max_i K_i(r) ≥ 1/δ} (K increases with r): floored at 0, which only makes the
  bound more conservative where early exits beat the last one.

**Multiple testing**: fixed-sequence testing. The thresholds of a rule's grid are tested from the most
conservative (nearest to where the rule never fires: the slowest) to the fastest, each at the full level δ, and
testing stops at the first threshold that fails; the choice is the last one certified. The order is fixed before
the calibration data are seen, so the family-wise error is at most δ without a Bonferroni split (which would
spend δ / 112 per threshold), and it needs no assumption that risk grows monotonically with speed. When even the
first (slowest) grid threshold fails, nothing is certified and the choice is the last exit for every example
(``threshold`` = the rule's never-firing value: +inf, or −inf for entropy), whose risk is 0 by definition for the
risks relative to the last exit (for ``error``: the last exit's own error, above ε when nothing is certified).

**A common target** (``common_target_rows``): the ``error`` risk at ε = 1 − (reference − offset), where the
reference is the best last-exit accuracy among a setting's methods on the calibration split of one seed (the
aggregation computes it, where all of a setting's runs are known; MM's last exit is its last member), so every
method is held to the same target accuracy. Caveats: Learn-then-Test's guarantee is for a target fixed before
the calibration data are seen, and this one is read off the same split, so the per-row statement "error ≤ ε with
probability ≥ 1 − δ" is not proven for it; tests/test_risk.py measures it by simulation instead (two methods on
shared examples: the chosen threshold's true error exceeds the target read off the draw in at most δ of draws).
And the exact binomial test is unpaired: at error rate p on n calibration examples it needs roughly
z_{1−δ}·sqrt(p(1 − p)/n) of room below ε (1.6 points at p = 0.1, n = 1000, δ = 0.05), so an offset smaller
than that certifies nothing even for the reference's own early exits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweet.cost import layer_fraction
from sweet.curves import MetricFn, threshold_grid
from sweet.exits import EXIT_RULES, ExitRule, calibrated_probs, simulate

DEFAULT_RISKS = ("disagreement", "accuracy-drop")
DEFAULT_EPSILONS = (0.005, 0.01, 0.02, 0.05)
DEFAULT_DELTA = 0.05
ORDER_SEED = 0  # the permutation betting reads the calibration examples in (any fixed seed is valid)
RISK_COLUMNS = ["strategy", "risk", "epsilon", "delta", "bound", "threshold", "certified", "why", "n_calibration",
                "n_certified", "calibration_risk", "upper_bound", "calibration_speedup", "eval_risk",
                "eval_speedup", "eval_score", "metric"]


# --------------------------------------------------------------------------------------------------------------
# risks


@dataclass(frozen=True)
class Risk:
    name: str
    loss: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (preds [K,N], labels [N], exit [N]) → [N]
    low: float
    high: float
    binary: bool  # 0/1 losses: the exact binomial test; otherwise betting on [low, high]
    relative: bool = True  # measured against the run's own last exit: 0 there by definition


def _disagreement(preds: np.ndarray, labels: np.ndarray, exit_index: np.ndarray) -> np.ndarray:
    taken = preds[exit_index, np.arange(preds.shape[1])]
    return (taken != preds[-1]).astype(np.float64)


def _accuracy_drop(preds: np.ndarray, labels: np.ndarray, exit_index: np.ndarray) -> np.ndarray:
    taken = preds[exit_index, np.arange(preds.shape[1])]
    return (preds[-1] == labels).astype(np.float64) - (taken == labels).astype(np.float64)


def _error(preds: np.ndarray, labels: np.ndarray, exit_index: np.ndarray) -> np.ndarray:
    taken = preds[exit_index, np.arange(preds.shape[1])]
    return (taken != labels).astype(np.float64)


RISKS: dict[str, Risk] = {
    "disagreement": Risk("disagreement", _disagreement, 0.0, 1.0, binary=True),
    "accuracy-drop": Risk("accuracy-drop", _accuracy_drop, -1.0, 1.0, binary=False),
    "error": Risk("error", _error, 0.0, 1.0, binary=True, relative=False),
}


# --------------------------------------------------------------------------------------------------------------
# bounds


def binomial_p_value(losses: int, n: int, epsilon: float) -> float:
    """P(Binomial(n, ε) ≤ losses): the exact p-value of H: risk ≥ ε for n 0/1 losses summing to ``losses``."""
    from scipy import stats

    return float(stats.binom.cdf(losses, n, epsilon))


def clopper_pearson_upper(losses: int, n: int, delta: float) -> float:
    """The one-sided 1 − δ upper confidence bound on a binomial rate: the smallest r with P(Bin(n, r) ≤ k) ≤ δ."""
    from scipy import stats

    return 1.0 if losses >= n else float(stats.beta.ppf(1.0 - delta, losses + 1, n - losses))


def betting_bets(losses: np.ndarray, delta: float, low: float, high: float) -> np.ndarray:
    """The predictable bets ν_j (they depend on ℓ_1..ℓ_{j−1} only, and not on the risk level tested)."""
    x = np.asarray(losses, dtype=np.float64)
    n = x.size
    i = np.arange(1, n + 1)
    mu = ((low + high) / 2 + np.cumsum(x)) / (1 + i)
    sigma2 = (((high - low) / 2) ** 2 + np.cumsum((x - mu) ** 2)) / (1 + i)
    previous = np.concatenate([[((high - low) / 2) ** 2], sigma2[:-1]])  # σ̂²_{j−1}, σ̂²_0 = the prior
    return np.minimum(1.0 / high, np.sqrt(2.0 * np.log(1.0 / delta) / (n * previous)))


def betting_log_wealth(losses: np.ndarray, r: float, delta: float, low: float, high: float) -> float:
    """max_i log K_i(r): the test rejects "risk ≥ r" when this reaches log(1/δ)."""
    x = np.asarray(losses, dtype=np.float64)
    nu = betting_bets(x, delta, low, high)
    with np.errstate(divide="ignore"):  # a factor of exactly 0 (ℓ = hi, r = 0, ν = 1/hi): wealth is gone
        return float(np.max(np.cumsum(np.log(1.0 - nu * (x - r)))))


def betting_upper_bound(losses: np.ndarray, delta: float, low: float, high: float) -> float:
    """inf{r ∈ [0, hi] : max_i K_i(r) ≥ 1/δ} (K increases with r); ``high`` when even r = hi is not rejected."""
    from scipy.optimize import brentq

    level = np.log(1.0 / delta)

    def excess(r: float) -> float:
        return betting_log_wealth(losses, r, delta, low, high) - level

    if excess(0.0) >= 0:
        return 0.0
    if excess(high) < 0:
        return float(high)
    return float(brentq(excess, 0.0, high, xtol=1e-12, rtol=1e-12, maxiter=500))


def certifies(risk: Risk, losses: np.ndarray, epsilon: float, delta: float) -> bool:
    """Whether H: risk ≥ ε is rejected at level δ on these calibration losses (in betting order)."""
    if risk.binary:
        return binomial_p_value(int(round(losses.sum())), losses.size, epsilon) <= delta
    return betting_log_wealth(losses, epsilon, delta, risk.low, risk.high) >= np.log(1.0 / delta)


def upper_bound(risk: Risk, losses: np.ndarray, delta: float) -> float:
    """The 1 − δ upper confidence bound matching ``certifies``: certified at ε exactly when this is ≤ ε."""
    if risk.binary:
        return clopper_pearson_upper(int(round(losses.sum())), losses.size, delta)
    return betting_upper_bound(losses, delta, risk.low, risk.high)


def fixed_sequence(tests: Sequence[bool] | Callable[[int], bool], count: int | None = None) -> int:
    """Index of the last hypothesis rejected before the first failure (−1: the first fails). ``tests`` is a list of
    outcomes, or a function of the index (evaluated lazily: nothing after the first failure is computed)."""
    test = tests if callable(tests) else tests.__getitem__
    count = len(tests) if count is None else count  # type: ignore[arg-type]
    last = -1
    for index in range(count):
        if not test(index):
            break
        last = index
    return last


def certified_prefix(
    risk: Risk, losses_at: Callable[[float], np.ndarray], sequence: np.ndarray, epsilon: float, delta: float
) -> int:
    """Fixed-sequence testing of ``sequence`` (most conservative first): the index of the last threshold certified
    before the first failure (−1: none). ``losses_at`` gives a threshold's calibration losses in betting order."""
    return fixed_sequence(lambda i: certifies(risk, losses_at(float(sequence[i])), epsilon, delta), len(sequence))


def conservative_order(rule: ExitRule, grid: np.ndarray) -> np.ndarray:
    """The grid from the most conservative threshold (nearest to where the rule never fires) to the fastest."""
    grid = np.asarray(grid, dtype=np.float64)
    return np.sort(grid)[::-1] if rule.never_fires > 0 else np.sort(grid)


# --------------------------------------------------------------------------------------------------------------
# per run


@dataclass
class _Split:
    """One split's predictions per exit and the exit each example takes at each threshold (computed once)."""

    preds: np.ndarray
    labels: np.ndarray
    costs: np.ndarray
    full_depth: int
    exits: dict[tuple[str, float], np.ndarray]

    @classmethod
    def of(cls, logits: dict[str, np.ndarray]) -> _Split:
        return cls(calibrated_probs(logits["exit_logits"], logits["temperatures"]).argmax(axis=-1),
                   np.asarray(logits["labels"]), logits["layer_costs"], int(logits["exit_layers"][-1]), {})

    def exit_index(self, name: str, probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
        key = (name, float(threshold))
        if key not in self.exits:
            self.exits[key] = simulate(EXIT_RULES[name], probs, lte, threshold)
        return self.exits[key]

    def speedup(self, exit_index: np.ndarray) -> float:
        return 1.0 / layer_fraction(exit_index, self.costs, self.full_depth)


def risk_control_rows(
    calibration: dict[str, np.ndarray],
    evaluation: dict[str, np.ndarray],
    metric_names: list[str],
    primary: str,
    metrics: MetricFn,
    risks: Sequence[str] = DEFAULT_RISKS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    delta: float = DEFAULT_DELTA,
    n: int = 11,
    dense: int = 101,
    order_seed: int = ORDER_SEED,
) -> pd.DataFrame:
    """One row per exit rule × risk × ε: the certified threshold (chosen on ``calibration``, the calibration
    split's logits) and what it does on ``evaluation`` (the evaluation split's): risk, speedup and score."""
    cal_probs = calibrated_probs(calibration["exit_logits"], calibration["temperatures"])
    eval_probs = calibrated_probs(evaluation["exit_logits"], evaluation["temperatures"])
    cal, ev = _Split.of(calibration), _Split.of(evaluation)
    cal_lte, eval_lte = calibration.get("lte_scores"), evaluation.get("lte_scores")
    order = np.random.default_rng(order_seed).permutation(cal.labels.size)  # betting's reading order
    num_exits, _, num_labels = cal_probs.shape
    rows = []
    for name, rule in EXIT_RULES.items():
        if rule.needs_lte and (cal_lte is None or eval_lte is None):
            continue
        grid, _ = threshold_grid(name, num_labels, num_exits, n, dense)
        sequence = conservative_order(rule, grid)
        for risk_name in risks:
            risk = RISKS[risk_name]

            def cal_losses(t: float, risk: Risk = risk, name: str = name) -> np.ndarray:
                return risk.loss(cal.preds, cal.labels, cal.exit_index(name, cal_probs, cal_lte, t))[order]

            at_last = cal_losses(rule.never_fires)  # every example at the last exit: all zeros for relative risks
            for epsilon in epsilons:
                # an absolute risk the last exit alone exceeds: no threshold is tested (the fallback misses ε too)
                above = not risk.relative and at_last.mean() > epsilon + 1e-12
                last = -1 if above else certified_prefix(risk, cal_losses, sequence, epsilon, delta)
                if last >= 0:
                    threshold = float(sequence[last])
                    losses = cal_losses(threshold)
                    bound = upper_bound(risk, losses, delta)
                    why = (f"certified: {last + 1} of {len(sequence)} thresholds pass, from the slowest; "
                           + (f"the next (t={sequence[last + 1]:.4g}) fails" if last + 1 < len(sequence)
                              else "all pass"))
                    cal_risk = float(losses.mean())
                else:
                    threshold = rule.never_fires
                    cal_risk = float(at_last.mean())
                    bound = 0.0 if risk.relative else upper_bound(risk, at_last, delta)
                    fallback = ("risk 0 by definition" if risk.relative
                                else f"its calibration risk {cal_risk:.4g}, upper bound {bound:.4g}")
                    if above:
                        why = (f"not certified: the last exit alone has calibration risk {cal_risk:.4g} > ε = "
                               f"{epsilon:.4g}, so no threshold is tested; the last exit answers every example")
                    else:
                        first = cal_losses(sequence[0])
                        why = (f"not certified: the slowest threshold (t={sequence[0]:.4g}) has risk "
                               f"{first.mean():.4g} and upper bound {upper_bound(risk, first, delta):.4g} > ε; "
                               f"the last exit answers every example ({fallback})")
                cal_exit = cal.exit_index(name, cal_probs, cal_lte, threshold)
                eval_exit = ev.exit_index(name, eval_probs, eval_lte, threshold)
                eval_preds = ev.preds[eval_exit, np.arange(ev.labels.size)]
                rows.append({
                    "strategy": name, "risk": risk_name, "epsilon": float(epsilon), "delta": float(delta),
                    "bound": "binomial" if risk.binary else "betting", "threshold": threshold,
                    "certified": last >= 0, "why": why, "n_calibration": int(cal.labels.size),
                    "n_certified": last + 1, "calibration_risk": cal_risk, "upper_bound": bound,
                    "calibration_speedup": cal.speedup(cal_exit),
                    "eval_risk": float(risk.loss(ev.preds, ev.labels, eval_exit).mean()),
                    "eval_speedup": ev.speedup(eval_exit),
                    "eval_score": metrics(metric_names, eval_preds, ev.labels)[primary], "metric": primary,
                })
    return pd.DataFrame(rows, columns=RISK_COLUMNS)


# --------------------------------------------------------------------------------------------------------------
# one target for every method of a setting

COMMON_TARGET_RISK = "error"
DEFAULT_ERROR_OFFSETS = (0.01, 0.02, 0.05)  # config.yaml's risk_control.error_offsets says why
COMMON_TARGET_COLUMNS = ["offset", "reference_accuracy", "reference_method", "target_accuracy",
                         "last_exit_accuracy", *RISK_COLUMNS]


def last_exit_accuracy(calibration: dict[str, np.ndarray]) -> float:
    """The run's last exit's accuracy on these logits (MM: its last member's): every example answered there."""
    split = _Split.of(calibration)
    return float((split.preds[-1] == split.labels).mean())


def common_reference(last_exit_accuracies: dict[str, float]) -> tuple[str, float]:
    """(method, accuracy) of the best last exit among a setting's methods for one seed; ties go to the first
    given (the caller passes the registry's order, so the tie-break is fixed before the data are seen)."""
    if not last_exit_accuracies:
        raise ValueError("no method to take a reference from")
    method = max(last_exit_accuracies, key=lambda m: last_exit_accuracies[m])  # max keeps the first of ties
    return method, last_exit_accuracies[method]


def common_target_rows(
    calibration: dict[str, np.ndarray],
    evaluation: dict[str, np.ndarray],
    reference_method: str,
    reference_accuracy: float,
    metric_names: list[str],
    primary: str,
    metrics: MetricFn,
    offsets: Sequence[float] = DEFAULT_ERROR_OFFSETS,
    delta: float = DEFAULT_DELTA,
    n: int = 11,
    dense: int = 101,
    order_seed: int = ORDER_SEED,
) -> pd.DataFrame:
    """One row per exit rule × offset: the ``error`` risk controlled at ε = 1 − (reference_accuracy − offset),
    the same target accuracy for every method of the setting. A run whose own last exit's calibration accuracy is
    below the target is not certified (nothing is tested), and its ``why`` says so."""
    own = last_exit_accuracy(calibration)
    targets = {float(o): reference_accuracy - float(o) for o in offsets}
    epsilons = [1.0 - t for t in targets.values()]
    rows = risk_control_rows(calibration, evaluation, metric_names, primary, metrics, [COMMON_TARGET_RISK],
                             epsilons, delta, n, dense, order_seed)
    by_epsilon = dict(zip(epsilons, targets))
    offset = rows["epsilon"].map(by_epsilon)
    target = offset.map(targets)
    head = [f"target accuracy {t:.4f} = reference {reference_accuracy:.4f} ({reference_method}) − {o:g}; "
            for o, t in zip(offset, target)]
    why = [h + (f"not certified: this run's own last exit has calibration accuracy {own:.4f}, below the target, "
                "so no threshold is tested and the last exit answers every example" if own < t - 1e-12 else w)
           for h, w, t in zip(head, rows["why"], target)]
    rows = rows.assign(why=why, offset=offset, reference_accuracy=reference_accuracy,
                       reference_method=reference_method, target_accuracy=target, last_exit_accuracy=own)
    return rows[COMMON_TARGET_COLUMNS]
