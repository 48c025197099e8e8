"""The training methods: one registry entry each, the only place a method is spelled out.

A method is what its entry says: a name and a label, a colour and marker for the figures, its layout (one job
trains every exit of one encoder, or one job per exit as Multi-Model), how gradient crosses an exit boundary, the
loss it minimises and its training stages, and the options it reads (with defaults and where they come from).
The config schema's method list, the workflow's wildcard, the CLI's choices, the cost and runtime estimates, the
reporting's order, labels, colours and markers all read this table. Adding a method is one entry here plus, where
it needs a new one, its loss in ``sweet.losses`` (``LOSSES``) — nothing else.

Standard library only: planning (``snakemake -n``) imports it, and must not import torch.

Gradient at an exit boundary (``boundary``), for exit k of K (1-based) reading hidden state h_k:
- ``shared`` — EE: the head and the later layers both send their full gradient into h_k.
- ``detached`` — SWEET: the later layers' gradient is cut at h_k (``h_k.detach()`` goes on), so the layers between
  exit k-1 and exit k learn from exit k's loss only.
- ``partial`` — the later layers' gradient into h_k is scaled by (1 − α), ``separation: α`` ∈ [0, 1]: α = 0 is
  EE, α = 1 is SWEET.
- ``equilibrium`` — gradient equilibrium: with r = K − k + 1 exits at or after exit k, exit k's head sends 1/r
  of its gradient into h_k and the later layers (r − 1)/r of theirs; the forward pass is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sweet.errors import UserError

LAYOUTS = ("joint", "per-exit")
BOUNDARIES = ("shared", "detached", "partial", "equilibrium")
TRAINS = ("all", "early-exits")


@dataclass(frozen=True)
class Option:
    """A method's option: its default, the range it must lie in, and where the default comes from."""

    default: float
    low: float
    high: float
    source: str
    low_open: bool = False  # the range excludes ``low``

    def check(self, name: str, value: Any, field_name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{field_name}.{name}: must be a number, got {value!r}")
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            bracket = "(" if self.low_open else "["
            raise UserError(f"{field_name}.{name}: {value!r} is outside {bracket}{self.low}, {self.high}]")
        return float(value)


@dataclass(frozen=True)
class Stage:
    """One pass of training over the data: its loss (a ``sweet.losses.LOSSES`` name) and what it updates.

    ``trains``: ``all`` parameters, or ``early-exits`` only (the backbone and the last exit frozen).
    ``init_early_from_last``: before the stage, every earlier exit's head is copied from the last exit's.
    """

    name: str
    loss: str
    trains: str = "all"
    init_early_from_last: bool = False


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    color: str  # Okabe–Ito (colour-blind safe) where the palette has room
    marker: str
    summary: str  # one line: what the method does
    cite: str  # its paper (and code)
    layout: str = "joint"
    boundary: str = "shared"
    stages: tuple[Stage, ...] = (Stage("train", "sum"),)
    options: dict[str, Option] = field(default_factory=dict)
    # Training options (sweet.train.TrainSpec fields) only some methods read; the others ignore them, so they are
    # not part of those runs' identity. Every joint method also reads ``shared_pooler`` (one pooler for all its
    # exits or one each), added here; an MM member has one exit and no such choice.
    reads: tuple[str, ...] = ()
    # Relative training cost of one run against EE's, for runtime estimates (two stages: two passes over the data).
    training_cost: float = 1.0

    def __post_init__(self) -> None:
        if self.layout == "joint" and "shared_pooler" not in self.reads:
            object.__setattr__(self, "reads", (*self.reads, "shared_pooler"))

    @property
    def per_exit(self) -> bool:
        """One job (and one independent model) per exit, run in sequence at inference: Multi-Model."""
        return self.layout == "per-exit"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.layout not in LAYOUTS or method.boundary not in BOUNDARIES:
        raise ValueError(f"{method.name}: layout {method.layout!r} / boundary {method.boundary!r} unknown")
    if any(stage.trains not in TRAINS for stage in method.stages):
        raise ValueError(f"{method.name}: a stage trains neither of {TRAINS}")
    METHODS[method.name] = method
    return method


# ------------------------------------------------------------------------------------------- the paper's three
register(Method(
    "ee", "EE", "#0072B2", "o", "every exit's loss summed; gradient shared across exits",
    "the standard early-exit fine-tuning (e.g. Kaya et al., ICML 2019; Xin et al., ACL 2020)",
    reads=("gradient_conflict_every",),
))
register(Method(
    "sweet", "SWEET", "#D55E00", "s", "each block updated by its own exit's loss only (detached at every exit)",
    "Rotem et al., ACL 2023, https://github.com/schwartz-lab-NLP/SWEET",
    boundary="detached",
))
register(Method(
    "mm", "MM", "#009E73", "^", "independent truncated copies of the encoder, run in sequence",
    "Rotem et al., ACL 2023 (Multi-Model)",
    layout="per-exit",
))

# ------------------------------------------------------------------------------------------- the field's baselines
register(Method(
    "pabee", "PABEE", "#E69F00", "D", "per-exit losses averaged with weights proportional to the exit's depth",
    "Zhou et al., NeurIPS 2020, 'BERT Loses Patience', https://github.com/JetRunner/PABEE (loss Σ i·ℓ_i / Σ i "
    "with an exit after every layer i; here w_i = the exit's layer)",
    stages=(Stage("train", "depth-weighted"),),
))
register(Method(
    "deebert", "DeeBERT", "#56B4E9", "v", "two stages: backbone with the last exit, then the earlier exits alone",
    "Xin et al., ACL 2020, https://github.com/castorini/DeeBERT (stage 2 trains the off-ramps with the encoder "
    "frozen)",
    stages=(Stage("last-exit", "last"),
            Stage("early-exits", "early", trains="early-exits", init_early_from_last=True)),
    training_cost=2.0,
))
register(Method(
    "berxit", "BERxiT", "#CC79A7", "P", "alternating steps: the last exit's loss, then every exit's",
    "Xin et al., EACL 2021, https://github.com/castorini/berxit (the 'alternating' fine-tuning strategy)",
    stages=(Stage("train", "alternating"),),
))
register(Method(
    "distill", "Self-distill", "#000000", "X", "earlier exits learn from the labels and the last exit's soft labels",
    "one-stage self-distillation: Li et al., ICCV 2019 ('IMTA', one-for-all knowledge distillation); FastBERT "
    "(Liu et al., ACL 2020) distils into its student exits the same way",
    stages=(Stage("train", "self-distillation"),),
    options={
        "gamma": Option(0.5, 0.0, 1.0, "[assumption] equal weight of labels and teacher (IMTA tunes it)"),
        "temperature": Option(2.0, 0.0, 100.0, "[assumption] a common distillation temperature (Hinton et al., "
                              "2015 scale the term by T²)", low_open=True),
    },
))
register(Method(
    "ge", "GE", "#999999", "*", "gradient equilibrium: each exit's gradient into the backbone rescaled",
    "Li et al., ICCV 2019 ('IMTA'); ElasticBERT's fine-tuning (Liu et al., NAACL 2022), "
    "https://github.com/fastnlp/ElasticBERT",
    boundary="equilibrium",
))
register(Method(
    "sep", "Partial separation", "#882255", "h", "gradient crossing each exit boundary scaled by (1 − α)",
    "this package: α = 0 is EE, α = 1 is SWEET",
    boundary="partial",
    options={"separation": Option(0.5, 0.0, 1.0, "[assumption] halfway between EE and SWEET")},
))


# ------------------------------------------------------------------------------------------- lookups
def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method: '{name}' is not a method; use one of {', '.join(METHODS)}") from None


def names(layout: str | None = None) -> tuple[str, ...]:
    """Every method's name in registry order (the figures' order), or those of one layout."""
    return tuple(m.name for m in METHODS.values() if layout is None or m.layout == layout)


def label(name: str, options: dict[str, Any] | None = None) -> str:
    """The method's label; a method whose options are not its defaults says which (``Partial separation α=0.25``)."""
    method = METHODS.get(name)
    if method is None:
        return name
    if name == "sep":  # its one option is what it is: always shown
        return f"{method.label} α={resolve_options(name, options)['separation']:g}"
    differ = {k: v for k, v in (options or {}).items() if k in method.options and v != method.options[k].default}
    if differ:
        return f"{method.label} ({', '.join(f'{k}={v:g}' for k, v in differ.items())})"
    return method.label


def resolve_options(name: str, given: dict[str, Any] | None, field_name: str | None = None) -> dict[str, float]:
    """The method's options: its defaults, overridden by ``given`` (checked; unknown keys refused)."""
    method = get(name)
    given = dict(given or {})
    field_name = field_name or f"method_options.{name}"
    unknown = sorted(set(given) - set(method.options))
    if unknown:
        known = ", ".join(method.options) or "none"
        raise UserError(f"{field_name}.{unknown[0]}: {name} has no such option (its options: {known})")
    return {key: option.check(key, given.get(key, option.default), field_name)
            for key, option in method.options.items()}


def boundary_scales(name: str, num_exits: int, options: dict[str, Any] | None = None) -> list[tuple[float, float]]:
    """Per exit (0-based), the factors on the gradient into its hidden state: (from its head, from later layers).

    The last exit's second factor is 0: nothing after it is computed."""
    method = get(name)
    scales = []
    for k in range(num_exits):
        later = k < num_exits - 1
        if method.boundary == "equilibrium":
            r = num_exits - k  # exits at or after this one
            scales.append((1.0 / r, (r - 1.0) / r))
        elif method.boundary == "detached":
            scales.append((1.0, 0.0))
        elif method.boundary == "partial":
            alpha = resolve_options(name, options)["separation"]
            scales.append((1.0, 1.0 - alpha if later else 0.0))
        else:
            scales.append((1.0, 1.0 if later else 0.0))
    return scales
