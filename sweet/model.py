"""EarlyExitModel: classifier exits on any supported Hugging Face encoder, trained as EE or SWEET.

The backbone is a stock ``AutoModel``. Forward hooks on the encoder layers named in ``exit_layers`` capture the
hidden state for each exit head and, for SWEET, hand the *detached* hidden state to the next layer: the forward
values are unchanged, but the layers between exit k-1 and exit k (the embeddings belong to the first block) then
receive gradient only from exit k's loss. Layers after the last exit are never computed.

Saved folders are peft-like: ``backbone/`` is a stock Hugging Face model folder (``AutoModel.from_pretrained``
loads the fine-tuned encoder), ``exit_heads.safetensors`` holds the heads and ``sweet_config.json`` the exits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel
from transformers.utils import ModelOutput

from sweet.backbones import (
    backbone_spec,
    check_exit_layers,
    encoder_layers,
    find_module,
    get_module,
    layer_output_modules,
)
from sweet.errors import UserError

CONFIG_NAME = "sweet_config.json"
HEADS_NAME = "exit_heads.safetensors"
METHODS = ("ee", "sweet")


@dataclass
class EarlyExitConfig:
    """Everything that defines the exits; the backbone's own config lives in ``backbone/config.json``."""

    exit_layers: list[int]
    num_labels: int
    method: str = "ee"  # "ee": exits share gradients; "sweet": each block is trained by its own exit only
    shared_pooler: bool = False  # True reproduces the reference: one [CLS] pooler shared by all exits
    learned_exit: bool = False  # add a learned-to-exit head per exit (BERxiT's LTE, the reference's `lte` rule)
    classifier_dropout: float | None = None  # None: the backbone's hidden_dropout_prob
    kind: str = field(default="early-exit", init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"method: '{self.method}' is not an early-exit method; use one of {', '.join(METHODS)}")
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

    loss: torch.Tensor | None = None
    exit_logits: torch.Tensor | None = None  # [num_exits, batch, num_labels]
    exit_losses: torch.Tensor | None = None  # [num_exits] cross-entropy of each exit (labels given)
    lte_scores: torch.Tensor | None = None  # [num_exits, batch] learned-to-exit probabilities


class StopForward(Exception):
    """Raised by a hook once nothing after the current layer is needed; caught by whoever installed the hook."""


class ExitHead(nn.Module):
    """[CLS] → dense+tanh pooler → dropout → linear, the shape of BERT's sequence classifier."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, own_pooler: bool) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size) if own_pooler else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, cls_hidden: torch.Tensor, shared_pooler: nn.Linear | None = None) -> torch.Tensor:
        pooler = self.pooler if self.pooler is not None else shared_pooler
        pooled = torch.tanh(pooler(cls_hidden))
        return self.classifier(self.dropout(pooled))


class EarlyExitModel(nn.Module):
    """An encoder with a classifier after each layer in ``config.exit_layers``."""

    def __init__(self, config: EarlyExitConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        spec = backbone_spec(backbone.config.model_type)
        self.exit_layers = check_exit_layers(config.exit_layers, backbone.config.num_hidden_layers)
        hidden = backbone.config.hidden_size
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = getattr(backbone.config, "hidden_dropout_prob", 0.1)
        pretrained_pooler = find_module(backbone, spec.pooler) if spec.pooler else None
        # The shared pooler is the backbone's own when it has one, so the reference's setting is reproduced exactly.
        self.shared_pooler = None
        if config.shared_pooler and pretrained_pooler is None:
            self.shared_pooler = nn.Linear(hidden, hidden)
        self.heads = nn.ModuleList(
            ExitHead(hidden, config.num_labels, dropout, own_pooler=not config.shared_pooler) for _ in self.exit_layers
        )
        self.lte_heads = (
            nn.ModuleList(nn.Linear(hidden, 1) for _ in self.exit_layers) if config.learned_exit else None
        )
        self._init_heads(pretrained_pooler)

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
            model = cls(config, backbone)
            state = load_file(folder / HEADS_NAME)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("backbone.")]
            if missing or unexpected:
                raise UserError(f"{folder / HEADS_NAME}: does not match {CONFIG_NAME} (missing {missing}, unexpected {unexpected})")
            return model
        if num_labels is None or exit_layers is None:
            raise UserError(f"{name_or_path}: a backbone checkpoint needs num_labels=… and exit_layers=[…]")
        backbone = load_backbone(name_or_path)
        config = EarlyExitConfig(exit_layers=list(exit_layers), num_labels=num_labels, method=method, **options)
        return cls(config, backbone)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``backbone/`` (stock HF folder), ``exit_heads.safetensors`` and ``sweet_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder / "backbone")
        heads = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        save_file(heads, folder / HEADS_NAME, metadata={"format": "pt"})
        self.config.save(folder)

    def _init_heads(self, pretrained_pooler: nn.Module | None) -> None:
        std = getattr(self.backbone.config, "initializer_range", 0.02)
        new_parts = [self.heads, self.lte_heads, self.shared_pooler]
        linears = [m for part in new_parts if part is not None for m in part.modules() if isinstance(m, nn.Linear)]
        for linear in linears:
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        if pretrained_pooler is not None:
            # Each exit's pooler starts from the pretrained one, as a single-exit fine-tune would.
            for head in self.heads:
                if head.pooler is not None:
                    head.pooler.load_state_dict(pretrained_pooler.state_dict())

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

    def pooler_for_shared_heads(self) -> nn.Linear | None:
        if not self.config.shared_pooler:
            return None
        if self.shared_pooler is not None:
            return self.shared_pooler
        return get_module(self.backbone, backbone_spec(self.backbone.config.model_type).pooler)

    def exit_head(self, k: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and learned-to-exit score) of exit ``k`` from the hidden states [batch, seq, hidden] at its layer."""
        cls_hidden = hidden[:, 0]
        logits = self.heads[k](cls_hidden, self.pooler_for_shared_heads())
        lte = None
        if self.lte_heads is not None:
            # Detached: learning when to exit must not change what the exit predicts.
            lte = torch.sigmoid(self.lte_heads[k](cls_hidden.detach())).squeeze(-1)
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
        detach = self.config.method == "sweet"

        def make_hook(k: int):
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                hidden_at_exit.append(hidden)
                if k == last:
                    raise StopForward
                if detach:
                    cut = hidden.detach()
                    return (cut, *output[1:]) if isinstance(output, tuple) else cut
                return None

            return hook

        handles = [module.register_forward_hook(make_hook(k)) for k, module in enumerate(self.exit_modules)]
        try:
            self.backbone(**_backbone_inputs(input_ids, attention_mask, token_type_ids))
        except StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()

        outputs = [self.exit_head(k, hidden) for k, hidden in enumerate(hidden_at_exit)]
        exit_logits = torch.stack([logits for logits, _ in outputs])
        lte_scores = torch.stack([lte for _, lte in outputs]) if self.lte_heads is not None else None
        loss = exit_losses = None
        if labels is not None:
            exit_losses = exit_loss_terms(exit_logits, labels, lte_scores)
            loss = exit_losses.sum()  # the reference's unweighted sum
        return ExitOutput(loss=loss, exit_logits=exit_logits, exit_losses=exit_losses, lte_scores=lte_scores)


def exit_loss_terms(exit_logits: torch.Tensor, labels: torch.Tensor, lte_scores: torch.Tensor | None) -> torch.Tensor:
    """Per-exit loss: cross-entropy, plus the learned-to-exit MSE against "this exit is right" when LTE is on."""
    num_exits, batch, num_labels = exit_logits.shape
    ce = F.cross_entropy(exit_logits.reshape(-1, num_labels).float(), labels.repeat(num_exits), reduction="none")
    losses = ce.view(num_exits, batch).mean(dim=1)
    if lte_scores is not None:
        correct = (exit_logits.argmax(-1) == labels).float().detach()
        losses = losses + ((lte_scores.float() - correct) ** 2).mean(dim=1)
    return losses


def load_backbone(name_or_path: str | Path) -> nn.Module:
    """A stock ``AutoModel`` from a local folder or (only when the user names one) a hub id."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(
            f"backbone: cannot load '{name_or_path}' ({str(err).splitlines()[0]}); give a local folder with a "
            "config.json or a Hugging Face hub id"
        ) from None
    backbone_spec(config.model_type)
    return AutoModel.from_pretrained(str(name_or_path), trust_remote_code=False, use_safetensors=None)


def _backbone_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    return inputs


