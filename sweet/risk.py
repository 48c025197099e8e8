"""Risk-controlled exit thresholds: the fastest threshold whose risk is certified on the calibration split.

Given a tolerance ε and a confidence 1 − δ, choose a threshold λ̂ from the calibration split's per-exit logits so
that, over the draw of the calibration split, P(R(λ̂) ≤ ε) ≥ 1 − δ, where R(λ) is the expected per-example loss
of early exit at λ on the distribution the calibration and evaluation examples are drawn from (Learn-then-Test:
Angelopoulos, Bates et al. 2021; for early exit: CALM, Schuster et al., NeurIPS 2022, and Jazbec et al., "Fast
yet Safe: Early-Exiting with Risk Control", NeurIPS 2024).

**Risks** (per example, relative to the run's own last exit, so no labels are needed for ``disagreement``):

* ``disagreement``: 1 when the prediction at the exit taken differs from the last exit's, else 0 (Jazbec et
  al.'s consistency risk, CALM's textual consistency for classification).
* ``accuracy-drop``: [last exit correct] − [exit taken correct] ∈ {−1, 0, 1} (Jazbec et al.'s performance-gap
  risk, unclipped): its mean is the accuracy the early exits lose against the full model. It can be negative
  (an early exit right where the last is wrong), and that is kept: clipping at 0 would bound a larger risk.

**Bounds.** Each threshold λ is a hypothesis H_λ: R(λ) > ε, rejected (λ *certified*) by a valid test at level δ:

* binary losses (``disagreement``): the exact binomial test, p = P(Binomial(n, ε) ≤ k) for k losses among n
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
(``threshold`` = the rule's never-firing value: +inf, or −inf for entropy), whose risk is 0 by definition.

The guarantee is per row (one strategy, risk and ε), over the calibration draw, for the expected risk; the
evaluation split's empirical risk (``eval_risk``) scatters around it. With ``calibrate_on: eval`` the
calibration split *is* the evaluation set and the guarantee is void (the configuration refuses it).
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


def _disagreement(preds: np.ndarray, labels: np.ndarray, exit_index: np.ndarray) -> np.ndarray:
    taken = preds[exit_index, np.arange(preds.shape[1])]
    return (taken != preds[-1]).astype(np.float64)


def _accuracy_drop(preds: np.ndarray, labels: np.ndarray, exit_index: np.ndarray) -> np.ndarray:
    taken = preds[exit_index, np.arange(preds.shape[1])]
    return (preds[-1] == labels).astype(np.float64) - (taken == labels).astype(np.float64)


RISKS: dict[str, Risk] = {
    "disagreement": Risk("disagreement", _disagreement, 0.0, 1.0, binary=True),
    "accuracy-drop": Risk("accuracy-drop", _accuracy_drop, -1.0, 1.0, binary=False),
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

            for epsilon in epsilons:
                last = certified_prefix(risk, cal_losses, sequence, epsilon, delta)
                if last >= 0:
                    threshold = float(sequence[last])
                    losses = cal_losses(threshold)
                    bound = upper_bound(risk, losses, delta)
                    why = (f"certified: {last + 1} of {len(sequence)} thresholds pass, from the slowest; "
                           + (f"the next (t={sequence[last + 1]:.4g}) fails" if last + 1 < len(sequence)
                              else "all pass"))
                    cal_risk = float(losses.mean())
                else:
                    first = cal_losses(sequence[0])
                    threshold, cal_risk, bound = rule.never_fires, 0.0, 0.0
                    why = (f"not certified: the slowest threshold (t={sequence[0]:.4g}) has risk "
                           f"{first.mean():.4g} and upper bound {upper_bound(risk, first, delta):.4g} > ε; the "
                           f"last exit answers every example (risk 0 by definition)")
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
