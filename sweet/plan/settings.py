"""What a run's settings are made of: the output root, the training options and their defaults, the defaults of
a synthetic task, a resolved model of the configuration, and how the configuration's layers of settings merge.

The bottom of the planning side: the configuration check (``sweet.plan.config``), the run layout
(``sweet.plan.layout``) and the job side (``sweet.train`` trains with ``TrainSpec``) all read these, and this module
reads only the registries. Standard library only: a run's identity is computed while snakemake plans.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sweet import methods  # the method registry: standard library only
from sweet.errors import UserError

RESULTS = "results"  # the output root; fixed, so no configuration value can move writes elsewhere
SYNTHETIC_DEFAULTS = {"train_size": 4000, "eval_size": 1000}  # sweet.synthetic.make_task's defaults
# training.report_to: the Trainer's own experiment-tracking integrations, and the pip package each one needs.
REPORT_TO_PACKAGES: dict[str, str | None] = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb",
                                             "mlflow": "mlflow"}
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainSpec:
    """A run's training options; the defaults are the paper's seed commands where it states them.

    The one definition of the training defaults: ``sweet.train`` trains with it and a run's identity
    (``sweet.plan.layout``) completes a configuration with ``TRAINING_DEFAULTS``, read from these fields."""

    learning_rate: float = 5e-5  # seed
    batch_size: int = 16  # seed
    epochs: float = 2.0  # seed
    max_length: int = 256  # seed
    warmup_ratio: float = 0.0  # fraction of the total optimizer steps spent warming up, in [0, 1)
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    precision: str = "fp32"  # bf16/fp16 apply on a GPU only
    shared_pooler: bool = False  # True: the reference's single pooler shared by all exits
    learned_exit: bool = False  # train learned-to-exit heads (the `learned` exit rule)
    gradient_conflict_every: int = 0  # EE only: probe per-exit gradient cosines every N steps (0 = off)
    save_steps: int = 200  # checkpoint interval, for resuming a killed job
    report_to: str = "none"  # the Trainer's tracking integration: none | tensorboard | wandb | mlflow (offline)

    @classmethod
    def from_dict(cls, values: dict[str, Any], field: str = "training") -> TrainSpec:
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise UserError(f"{field}.{key}: unknown training option; known: {', '.join(known)}")
        spec = cls(**values)
        for name in ("learning_rate", "epochs"):
            if not isinstance(getattr(spec, name), (int, float)) or getattr(spec, name) <= 0:
                raise UserError(f"{field}.{name}: must be a positive number, got {getattr(spec, name)!r}")
        for name in ("batch_size", "max_length", "gradient_accumulation_steps", "save_steps"):
            value = getattr(spec, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{field}.{name}: must be a positive integer, got {value!r}")
        ratio = spec.warmup_ratio
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
            raise UserError(f"{field}.warmup_ratio: must be a fraction of the training steps in [0, 1), got {ratio!r}")
        if spec.precision not in PRECISIONS:
            raise UserError(f"{field}.precision: '{spec.precision}' is not one of {', '.join(PRECISIONS)}")
        if spec.report_to not in REPORT_TO_PACKAGES:
            raise UserError(f"{field}.report_to: {spec.report_to!r} is not one of {', '.join(REPORT_TO_PACKAGES)}")
        return spec


# The training options every run starts from, as a mapping (what a run's identity completes a configuration with).
TRAINING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainSpec)}

# Architecture of the hub models the paper grid names (from their config.json), so the dry run can check exit
# layers and estimate disk use without downloading anything.
KNOWN_BACKBONES: dict[str, dict[str, Any]] = {
    "bert-base-uncased": dict(model_type="bert", num_hidden_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=30522,
                              max_position_embeddings=512, type_vocab_size=2),
    "bert-large-uncased": dict(model_type="bert", num_hidden_layers=24, hidden_size=1024, intermediate_size=4096, vocab_size=30522,
                               max_position_embeddings=512, type_vocab_size=2),
    "roberta-base": dict(model_type="roberta", num_hidden_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=50265,
                         max_position_embeddings=514, type_vocab_size=1),
    "roberta-large": dict(model_type="roberta", num_hidden_layers=24, hidden_size=1024, intermediate_size=4096, vocab_size=50265,
                          max_position_embeddings=514, type_vocab_size=1),
    "microsoft/deberta-base": dict(model_type="deberta", num_hidden_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=50265,
                                   max_position_embeddings=512, type_vocab_size=0),
    "microsoft/deberta-large": dict(model_type="deberta", num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                                    vocab_size=50265, max_position_embeddings=512, type_vocab_size=0),
    "microsoft/deberta-v3-base": dict(model_type="deberta-v2", num_hidden_layers=12, hidden_size=768, intermediate_size=3072,
                                      vocab_size=128100, max_position_embeddings=512, type_vocab_size=0),
    "microsoft/deberta-v3-large": dict(model_type="deberta-v2", num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                                       vocab_size=128100, max_position_embeddings=512, type_vocab_size=0),
}


@dataclass
class Model:
    """A model of the configuration, resolved: where its backbone comes from and how it trains."""

    name: str  # the config key
    slug: str  # the folder name under results/ ("/" → "--")
    backbone: str | dict  # hub id, local folder, or inline mapping
    kind: str  # "hub" | "local" | "inline"
    exit_layers: list[int]
    training: dict[str, Any] = field(default_factory=dict)  # model-level overrides only
    arch: dict[str, Any] | None = None  # sizes (and model_type of a local folder), when knowable offline
    pooling: str | None = None  # how exits read the hidden states; None: the backbone's default (cls / last)
    revision: str | None = None  # hub backbones: the branch, tag or commit to fetch (None: main)

    @property
    def model_type_offline(self) -> str | None:
        """The architecture where it is known without the hub cache (inline, local folder, a known hub id)."""
        if isinstance(self.backbone, dict):
            return self.backbone.get("model_type")
        if self.kind == "hub" and self.backbone not in KNOWN_BACKBONES:
            return None  # read from the cache once fetched, which must not change what the plan says
        return (self.arch or {}).get("model_type")


def slug(name: str) -> str:
    return name.replace("/", "--")


def merged_training(config: dict, model: Model, grid: str | None = None) -> dict[str, Any]:
    """Training options of a run: defaults, then the model's overrides, then the grid's (the selected one unless
    ``grid`` names another)."""
    spec = dict(config.get("training") or {})
    spec.update(model.training)
    spec.update(config["grids"][grid or config["grid"]].get("training") or {})
    return spec


def merged_method_options(config: dict, method: str, grid: str | None = None) -> dict[str, float]:
    """A method's options in a grid: its defaults, then the top-level ``method_options.<method>``, then the grid's
    (the selected one unless ``grid`` names another), merged key by key; {} for a method without options."""
    given = dict((config.get("method_options") or {}).get(method) or {})
    grid_name = grid or config["grid"]
    overrides = (config["grids"][grid_name].get("method_options") or {}).get(method) or {}
    given.update(overrides)
    where = f"grids.{grid_name}.method_options.{method}" if overrides else f"method_options.{method}"
    return methods.resolve_options(method, given, where)
