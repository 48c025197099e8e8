"""EarlyExitModel: classifier exits on any supported Hugging Face backbone, trained by any joint method.

The backbone is a stock ``AutoModel``. Forward hooks on the layers named in ``exit_layers`` capture the hidden
state for each exit head and hand the next layer the same values with the method's gradient routing
(``sweet.methods.boundary_scales``): EE passes the gradient through unchanged; SWEET hands on the *detached*
hidden state, so the layers between exit k-1 and exit k (the embeddings belong to the first block) receive
gradient only from exit k's loss; partial separation and gradient equilibrium scale it. The forward values never
change. Layers after the last exit are never computed. The model returns each exit's logits and loss; how a
method combines the losses is the training's (``sweet.losses``).

An exit pools the hidden states of its layer into one vector per example (``pooling``: the first token, the mean
or the last token, reading padding from the attention mask), after its own copy of the backbone's final norm
where the architecture has one (ModernBERT, decoders), and classifies it with a head shaped like the stock
sequence classifier's (``sweet.backbones.HEADS``).

Saved folders are peft-like: ``backbone/`` is a stock Hugging Face model folder (``AutoModel.from_pretrained``
loads the fine-tuned encoder), ``exit_heads.safetensors`` holds the heads and ``sweet_config.json`` the exits.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from sweet.backbones import (
    backbone_spec,
    check_exit_layers,
    encoder_layers,
    final_norm,
    find_module,
    get_module,
    layer_output_modules,
    resolve_head,
    resolve_pooling,
)
from sweet.errors import UserError
from sweet.methods import boundary_scales, names, resolve_options

CONFIG_NAME = "sweet_config.json"  # in a run: sweet.plan.layout.SWEET_CONFIG (a test keeps them equal)
HEADS_NAME = "exit_heads.safetensors"
METHODS = names(layout="joint")  # every method that trains all exits of one encoder (sweet.methods)


@dataclass
class EarlyExitConfig:
    """Everything that defines the exits; the backbone's own config lives in ``backbone/config.json``."""

    exit_layers: list[int]
    num_labels: int
    # a joint-layout method of sweet.methods: it says how gradient crosses each exit boundary (EE shares it, SWEET
    # cuts it, …); its options (e.g. partial separation's α) are in method_options
    method: str = "ee"
    method_options: dict[str, float] = field(default_factory=dict)
    shared_pooler: bool = False  # True reproduces the reference: one [CLS] pooler shared by all exits
    learned_exit: bool = False  # add a learned-to-exit head per exit (BERxiT's LTE, the reference's `lte` rule)
    classifier_dropout: float | None = None  # None: what the stock classifier of this architecture uses
    # cls | mean | last (see sweet.backbones.POOLINGS); None: the architecture's default (cls for encoders, as in
    # the paper; last for decoders). Folders saved before pooling existed have no key and load as cls.
    pooling: str | None = None
    # One of sweet.backbones.HEADS; None: the architecture's stock classifier head. Folders saved before the key
    # existed load with the shape they were trained with (BERT's tanh pooler on every BERT-like encoder).
    head: str | None = None
    kind: str = field(default="early-exit", init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"method: '{self.method}' is not an early-exit method; use one of {', '.join(METHODS)}")
        self.method_options = resolve_options(self.method, self.method_options)
        if not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise UserError(f"num_labels: {self.num_labels!r} must be an integer ≥ 2")

    def save(self, folder: Path) -> None:
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> EarlyExitConfig:
        data = json.loads((folder / CONFIG_NAME).read_text())
        data.pop("kind", None)
        return cls(**data)


@dataclass
class ExitOutput(ModelOutput):
    """What both EarlyExitModel and MultiModel return."""

    exit_logits: torch.Tensor | None = None  # [num_exits, batch, num_labels]
    # [num_exits] each exit's own loss (labels given); how a method combines them is the training's (sweet.losses)
    exit_losses: torch.Tensor | None = None
    lte_scores: torch.Tensor | None = None  # [num_exits, batch] learned-to-exit probabilities


class ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient flowing back is multiplied by ``scale`` (exact forward values)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` with its backward gradient scaled: 1 is ``x`` itself, 0 is ``x.detach()``."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return ScaleGradient.apply(x, scale)


class StopForward(Exception):
    """Raised by a hook once nothing after the current layer is needed; caught by whoever installed the hook."""


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per example from hidden states [batch, seq, hidden]; padding is where ``attention_mask`` is 0.

    "cls": the first token, as every stock classifier of an encoder takes it (BERT's pooler, RoBERTa's and
    ELECTRA's heads, DeBERTa's ContextPooler, ModernBERT's "cls"): position 0 whatever the mask, which `sweet`'s
    right padding makes the [CLS] token, so no exit spends a mask lookup and its scatter in backward on it (issue
    25's operator counts). "mean": the mean over non-padding tokens; "last": the last non-padding token (right
    or left padding).
    """
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        if pooling == "mean":
            return hidden.mean(dim=1)
        if pooling == "last":
            return hidden[:, -1]
        raise ValueError(f"unknown pooling {pooling!r}")
    if pooling == "mean":
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    if pooling != "last":
        raise ValueError(f"unknown pooling {pooling!r}")
    position = hidden.shape[1] - 1 - attention_mask.bool().flip(1).int().argmax(dim=1)  # argmax: the first maximum
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), position]


class ContextPooler(nn.Module):
    """DeBERTa's stock ``ContextPooler`` after the pooling: dropout (``pooler_dropout``) → dense → ``pooler_hidden_act``.

    The stock module picks the first token itself; here the exit's pooling has done that, so any pooling works.
    Parameter names are the stock module's, so its state dict loads either way.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.pooler_hidden_size, config.pooler_hidden_size)
        self.dropout = nn.Dropout(config.pooler_dropout)
        self.activation = ACT2FN[config.pooler_hidden_act]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.dropout(pooled)))


class ClassificationHeadDense(nn.Module):
    """RoBERTa's / ELECTRA's stock ``…ClassificationHead`` up to its output projection: dropout → dense → activation.

    The stock head applies its one dropout again before ``out_proj``: the exit's own dropout (same rate) does that.
    """

    def __init__(self, config: Any, activation: str, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[activation]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.dropout(pooled)))


def make_pooler(head: str, config: Any, dropout: float) -> nn.Module | None:
    """The part of an exit head between the pooled vector and the classifier's dropout, as the stock classifier has.

    ``dropout``: the rate before the classifier (the classification head's first dropout has the same rate)."""
    hidden = config.hidden_size
    if head == "tanh-pooler":
        return nn.Linear(hidden, hidden)  # tanh is applied in ExitHead.forward (parameter names as saved since v1)
    if head == "context-pooler":
        return ContextPooler(config)
    if head == "classification-head":
        return ClassificationHeadDense(config, backbone_spec(config.model_type).head_activation, dropout)
    if head == "prediction-head":
        from transformers.models.modernbert.modeling_modernbert import ModernBertPredictionHead

        return ModernBertPredictionHead(config)
    return None


def head_dropout(head: str, config: Any) -> float:
    """The dropout before the classifier in the stock classifier of this head shape."""
    if head in ("tanh-pooler", "classification-head"):
        # BERT, RoBERTa, ELECTRA: classifier_dropout, where the config sets it
        rate = getattr(config, "classifier_dropout", None)
        return getattr(config, "hidden_dropout_prob", 0.1) if rate is None else rate
    if head == "context-pooler":
        rate = getattr(config, "cls_dropout", None)
        return config.hidden_dropout_prob if rate is None else rate
    if head == "prediction-head":
        return getattr(config, "classifier_dropout", 0.0)
    return 0.0  # the decoders' `score` has none


class ExitHead(nn.Module):
    """One exit: [its copy of the final norm] → pooling → [pooler] → dropout → classifier.

    The pooler is the exit's own (``own_pooler``) or one shared by every exit (the reference's single pooler).
    """

    def __init__(
        self,
        head: str,
        config: Any,
        num_labels: int,
        dropout: float,
        pooling: str,
        own_pooler: bool,
        norm: nn.Module | None,
    ) -> None:
        super().__init__()
        self.kind = head
        self.pooling = pooling
        self.norm = norm
        self.pooler = make_pooler(head, config, dropout) if own_pooler else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels, bias=head != "score")

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The normalised, pooled vector this exit classifies (what its learned-to-exit head reads too)."""
        if self.norm is None:
            return pool(hidden, attention_mask, self.pooling)
        if self.pooling == "mean":
            return pool(self.norm(hidden), attention_mask, "mean")
        # A per-token norm commutes with picking a token: normalise only the one that is read.
        return self.norm(pool(hidden, attention_mask, self.pooling))

    def forward(self, pooled: torch.Tensor, shared_pooler: nn.Module | None = None) -> torch.Tensor:
        pooler = self.pooler if self.pooler is not None else shared_pooler
        if pooler is not None:
            pooled = pooler(pooled)
            if self.kind == "tanh-pooler":
                pooled = torch.tanh(pooled)
        return self.classifier(self.dropout(pooled))


class EarlyExitModel(nn.Module):
    """An encoder with a classifier after each layer in ``config.exit_layers``."""

    def __init__(
        self, config: EarlyExitConfig, backbone: nn.Module, pretrained_head: nn.Module | None = None
    ) -> None:
        """``pretrained_head``: the checkpoint's head outside the AutoModel (``Backbone.pretrained_head``)."""
        super().__init__()
        self.config = config
        self.backbone = backbone
        model_type = backbone.config.model_type
        spec = backbone_spec(model_type)
        self.exit_layers = check_exit_layers(config.exit_layers, backbone.config.num_hidden_layers)
        config.pooling = resolve_pooling(model_type, config.pooling)  # saved explicitly from here on
        config.head = head = resolve_head(model_type, config.head)  # likewise
        hidden = backbone.config.hidden_size
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = head_dropout(head, backbone.config)
        if config.shared_pooler and head == "score":
            raise UserError(f"shared_pooler: {model_type} exits have no pooler to share (one linear layer each)")
        backbone_pooler = find_module(backbone, spec.pooler) if spec.pooler and head == "tanh-pooler" else None
        # A pretrained head of another shape (a folder saved with the tanh pooler) cannot seed these exits.
        pretrained = backbone_pooler if backbone_pooler is not None else pretrained_head if head == spec.head else None
        # The shared pooler is the backbone's own when it has one, so the reference's setting is reproduced exactly.
        self.shared_pooler = None
        if config.shared_pooler and backbone_pooler is None:
            self.shared_pooler = make_pooler(head, backbone.config, dropout)
        norm = final_norm(backbone)
        self.heads = nn.ModuleList(
            ExitHead(
                head, backbone.config, config.num_labels, dropout, config.pooling,
                own_pooler=not config.shared_pooler, norm=None if norm is None else copy.deepcopy(norm),
            )
            for _ in self.exit_layers
        )
        self.lte_heads = (
            nn.ModuleList(nn.Linear(hidden, 1) for _ in self.exit_layers) if config.learned_exit else None
        )
        self._init_heads(pretrained)

    # ----------------------------------------------------------------------------------------------------------
    # construction, saving, loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        num_labels: int | None = None,
        exit_layers: list[int] | None = None,
        method: str = "ee",
        **options: Any,
    ) -> EarlyExitModel:
        """A saved EarlyExitModel folder (no other arguments), or a backbone checkpoint plus exits to add."""
        folder = Path(name_or_path)
        if (folder / CONFIG_NAME).is_file():
            if num_labels is not None or exit_layers is not None or options:
                raise UserError(f"{folder}: a saved EarlyExitModel is restored as saved; pass no other arguments")
            config = EarlyExitConfig.load(folder)
            backbone = AutoModel.from_pretrained(folder / "backbone", trust_remote_code=False)
            config.head = resolve_head(backbone.config.model_type, config.head, saved_folder=True)
            model = cls(config, backbone)  # every head is then overwritten with the saved one
            state = load_file(folder / HEADS_NAME)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("backbone.")]
            if missing or unexpected:
                raise UserError(f"{folder / HEADS_NAME}: does not match {CONFIG_NAME} (missing {missing}, unexpected {unexpected})")
            return model
        if num_labels is None or exit_layers is None:
            raise UserError(f"{name_or_path}: a backbone checkpoint needs num_labels=… and exit_layers=[…]")
        backbone, pretrained_head = load_backbone(name_or_path)
        config = EarlyExitConfig(exit_layers=list(exit_layers), num_labels=num_labels, method=method, **options)
        return cls(config, backbone, pretrained_head)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``backbone/`` (stock HF folder), ``exit_heads.safetensors`` and ``sweet_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder / "backbone")
        heads = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        save_file(heads, folder / HEADS_NAME, metadata={"format": "pt"})
        self.config.save(folder)

    def _init_heads(self, pretrained: nn.Module | None) -> None:
        config = self.backbone.config
        std = getattr(config, "initializer_range", 0.02)
        pooler_std = classifier_std = std
        cutoff = None  # "normal" (see Backbone.head_init)
        if backbone_spec(config.model_type).head_init == "modernbert":
            cutoff = getattr(config, "initializer_cutoff_factor", None) or 3.0  # as the stock code: 3 when unset
            pooler_std = std / (2.0 * config.num_hidden_layers) ** 0.5
            classifier_std = config.hidden_size**-0.5
        classifiers = {id(head.classifier) for head in self.heads}
        learned_exit = {id(m) for m in self.lte_heads or []}  # no stock counterpart: initializer_range
        new_parts = [self.heads, self.lte_heads, self.shared_pooler]
        # One pass in module order (the random draws of the "normal" backbones are as they always were).
        linears = [m for part in new_parts if part is not None for m in part.modules() if isinstance(m, nn.Linear)]
        for linear in linears:
            scale = classifier_std if id(linear) in classifiers else std if id(linear) in learned_exit else pooler_std
            if cutoff is None:
                nn.init.normal_(linear.weight, std=scale)
            else:
                nn.init.trunc_normal_(linear.weight, std=scale, a=-cutoff * scale, b=cutoff * scale)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        if pretrained is not None:
            # Each exit's pooler starts from the pretrained one, as a single-exit fine-tune would.
            poolers = [head.pooler for head in self.heads] + [self.shared_pooler]
            for pooler in poolers:
                if pooler is not None:
                    pooler.load_state_dict(pretrained.state_dict())

    # ----------------------------------------------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    @property
    def layers(self) -> nn.ModuleList:
        return encoder_layers(self.backbone)

    @property
    def exit_modules(self) -> list[nn.Module]:
        """The module whose output is the hidden state each exit reads (and SWEET cuts), in exit order."""
        return layer_output_modules(self.backbone, self.exit_layers)

    @property
    def pooling(self) -> str:
        return self.config.pooling

    def pooler_for_shared_heads(self) -> nn.Module | None:
        if not self.config.shared_pooler:
            return None
        if self.shared_pooler is not None:
            return self.shared_pooler
        return get_module(self.backbone, backbone_spec(self.backbone.config.model_type).pooler)

    def exit_head(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and learned-to-exit score) of exit ``k`` from the hidden states [batch, seq, hidden] at its layer
        (the layer's raw output: the exit applies its own copy of the final norm) and the rows' attention mask."""
        pooled = self.heads[k].pool(hidden, attention_mask)
        logits = self.heads[k](pooled, self.pooler_for_shared_heads())
        lte = None
        if self.lte_heads is not None:
            # Detached: learning when to exit must not change what the exit predicts.
            lte = torch.sigmoid(self.lte_heads[k](pooled.detach())).squeeze(-1)
        return logits, lte

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> ExitOutput:
        hidden_at_exit: list[torch.Tensor] = []
        last = self.num_exits - 1
        # (into the head, into the later layers): how the method's gradient crosses each exit (sweet.methods)
        scales = boundary_scales(self.config.method, self.num_exits, self.config.method_options)

        def make_hook(k: int):
            head_scale, onward_scale = scales[k]

            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                hidden_at_exit.append(scale_gradient(hidden, head_scale))
                if k == last:
                    raise StopForward
                if onward_scale != 1.0:
                    onward = scale_gradient(hidden, onward_scale)
                    return (onward, *output[1:]) if isinstance(output, tuple) else onward
                return None

            return hook

        handles = [module.register_forward_hook(make_hook(k)) for k, module in enumerate(self.exit_modules)]
        try:
            self.backbone(**backbone_inputs(self.backbone, input_ids, attention_mask, token_type_ids))
        except StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()

        outputs = [self.exit_head(k, hidden, attention_mask) for k, hidden in enumerate(hidden_at_exit)]
        exit_logits = torch.stack([logits for logits, _ in outputs])
        lte_scores = torch.stack([lte for _, lte in outputs]) if self.lte_heads is not None else None
        exit_losses = exit_loss_terms(exit_logits, labels, lte_scores) if labels is not None else None
        return ExitOutput(exit_logits=exit_logits, exit_losses=exit_losses, lte_scores=lte_scores)


def exit_loss_terms(exit_logits: torch.Tensor, labels: torch.Tensor, lte_scores: torch.Tensor | None) -> torch.Tensor:
    """Per-exit loss: cross-entropy, plus the learned-to-exit MSE against "this exit is right" when LTE is on."""
    num_exits, batch, num_labels = exit_logits.shape
    ce = F.cross_entropy(exit_logits.reshape(-1, num_labels).float(), labels.repeat(num_exits), reduction="none")
    losses = ce.view(num_exits, batch).mean(dim=1)
    if lte_scores is not None:
        correct = (exit_logits.argmax(-1) == labels).float().detach()
        losses = losses + ((lte_scores.float() - correct) ** 2).mean(dim=1)
    return losses


def load_backbone(name_or_path: str | Path, **config_overrides: Any) -> tuple[nn.Module, nn.Module | None]:
    """A stock ``AutoModel`` from a local folder or (only when the user names one) a hub id, and the pretrained head
    the stock sequence classifier would start from where the registry names one (``Backbone.pretrained_head``)
    and the checkpoint has it (None otherwise). ``config_overrides``: e.g. ``num_hidden_layers`` to truncate."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(
            f"backbone: cannot load '{name_or_path}' ({str(err).splitlines()[0]}); give a local folder with a "
            "config.json or a Hugging Face hub id"
        ) from None
    spec = backbone_spec(config.model_type)
    if spec.pretrained_head is None:
        backbone = AutoModel.from_pretrained(
            str(name_or_path), trust_remote_code=False, use_safetensors=None, **config_overrides
        )
        return backbone, None
    # The head lives in the stock classifier, outside the AutoModel: load that class once, keep its base model.
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path), trust_remote_code=False, use_safetensors=None, output_loading_info=True, **config_overrides
    )
    prefix = spec.pretrained_head + "."
    pretrained = not any(key.startswith(prefix) for key in info["missing_keys"])
    return classifier.base_model, get_module(classifier, spec.pretrained_head) if pretrained else None


def backbone_inputs(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> dict[str, Any]:
    """Keyword arguments of the backbone's forward: the ones it takes, and no key/value cache (decoders)."""
    accepted = _forward_parameters(type(backbone))
    inputs: dict[str, Any] = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    if token_type_ids is not None and "token_type_ids" in accepted:
        inputs["token_type_ids"] = token_type_ids
    if "use_cache" in accepted:
        inputs["use_cache"] = False
    return inputs


@functools.cache
def _forward_parameters(backbone_class: type) -> frozenset[str]:
    """The argument names of a backbone class's forward (read once per class: this is on every forward pass)."""
    return frozenset(inspect.signature(backbone_class.forward).parameters)
