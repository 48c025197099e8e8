"""MultiModel: independent truncated copies of an encoder, run in sequence until one is confident.

Member k is the checkpoint cut to its first ``exit_layers[k]`` layers (``num_hidden_layers=L_k``) with its own
classification head: a stock ``AutoModelForSequenceClassification`` that any Hugging Face tool loads. Members are
fine-tuned alone (one job each, so a cluster runs them in parallel) and saved as ``member_<k>/`` folders; the
MultiModel folder adds ``sweet_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from sweet.backbones import backbone_spec, check_exit_layers
from sweet.errors import UserError
from sweet.io import write_text
from sweet.model import CONFIG_NAME, ExitOutput, _backbone_inputs, exit_loss_terms

LTE_NAME = "lte_head.safetensors"


def member_dir_name(k: int) -> str:
    """Folder of member k (1-based, like exit numbers in every table)."""
    return f"member_{k}"


class MemberModel(nn.Module):
    """One MM member as trained: the stock classifier plus an optional learned-to-exit head on its last [CLS]."""

    def __init__(self, classifier: nn.Module, learned_exit: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        hidden = classifier.config.hidden_size
        self.lte_head = nn.Linear(hidden, 1) if learned_exit else None
        if self.lte_head is not None:
            nn.init.normal_(self.lte_head.weight, std=getattr(classifier.config, "initializer_range", 0.02))
            nn.init.zeros_(self.lte_head.bias)

    @property
    def depth(self) -> int:
        return self.classifier.config.num_hidden_layers

    @classmethod
    def from_checkpoint(
        cls, name_or_path: str | Path, num_labels: int, depth: int, learned_exit: bool = False
    ) -> MemberModel:
        """The checkpoint truncated to its first ``depth`` layers, with a fresh head."""
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
        backbone_spec(config.model_type)
        check_exit_layers([depth], config.num_hidden_layers)
        classifier = AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), num_labels=num_labels, num_hidden_layers=depth, trust_remote_code=False
        )
        return cls(classifier, learned_exit)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MemberModel:
        folder = Path(folder)
        classifier = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False)
        model = cls(classifier, learned_exit=(folder / LTE_NAME).is_file())
        if model.lte_head is not None:
            model.lte_head.load_state_dict(load_file(folder / LTE_NAME))
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.classifier.save_pretrained(folder)
        if self.lte_head is not None:
            state = {k: v.detach().contiguous() for k, v in self.lte_head.state_dict().items()}
            save_file(state, folder / LTE_NAME, metadata={"format": "pt"})

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> ExitOutput:
        out = self.classifier(
            **_backbone_inputs(input_ids, attention_mask, token_type_ids),
            output_hidden_states=self.lte_head is not None,
        )
        exit_logits = out.logits.unsqueeze(0)
        lte = None
        if self.lte_head is not None:
            cls_hidden = out.hidden_states[-1][:, 0].detach()
            lte = torch.sigmoid(self.lte_head(cls_hidden)).squeeze(-1).unsqueeze(0)
        loss = exit_losses = None
        if labels is not None:
            exit_losses = exit_loss_terms(exit_logits, labels, lte)
            loss = exit_losses.sum()
        return ExitOutput(loss=loss, exit_logits=exit_logits, exit_losses=exit_losses, lte_scores=lte)


class MultiModel(nn.Module):
    """Members of growing depth; exit k is member k's prediction."""

    def __init__(self, members: list[MemberModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.exit_layers = [m.depth for m in members]
        check_exit_layers(self.exit_layers, max(self.exit_layers), field="MultiModel member depths")
        self.num_labels = members[0].classifier.config.num_labels

    @property
    def num_exits(self) -> int:
        return len(self.members)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        num_labels: int | None = None,
        exit_layers: list[int] | None = None,
        learned_exit: bool = False,
    ) -> MultiModel:
        """A saved MultiModel folder (no other arguments), or a checkpoint and the member depths."""
        folder = Path(name_or_path)
        if (folder / CONFIG_NAME).is_file():
            if num_labels is not None or exit_layers is not None:
                raise UserError(f"{folder}: a saved MultiModel is restored as saved; pass no other arguments")
            config = json.loads((folder / CONFIG_NAME).read_text())
            if config.get("kind") != "multi-model":
                raise UserError(f"{folder / CONFIG_NAME}: not a MultiModel (kind={config.get('kind')!r})")
            members = [MemberModel.from_pretrained(folder / name) for name in config["members"]]
            return cls(members)
        if num_labels is None or exit_layers is None:
            raise UserError(f"{name_or_path}: a backbone checkpoint needs num_labels=… and exit_layers=[…]")
        depth = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False).num_hidden_layers
        check_exit_layers(list(exit_layers), depth)
        return cls([MemberModel.from_checkpoint(name_or_path, num_labels, d, learned_exit) for d in exit_layers])

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        names = [member_dir_name(k + 1) for k in range(self.num_exits)]
        for member, name in zip(self.members, names):
            member.save_pretrained(folder / name)
        write_multimodel_config(folder, names, self.exit_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> ExitOutput:
        outs = [m(input_ids, attention_mask, token_type_ids, labels) for m in self.members]
        exit_logits = torch.cat([o.exit_logits for o in outs])
        lte = torch.cat([o.lte_scores for o in outs]) if all(o.lte_scores is not None for o in outs) else None
        exit_losses = torch.cat([o.exit_losses for o in outs]) if labels is not None else None
        loss = exit_losses.sum() if exit_losses is not None else None
        return ExitOutput(loss=loss, exit_logits=exit_logits, exit_losses=exit_losses, lte_scores=lte)


def write_multimodel_config(folder: Path, member_names: list[str], exit_layers: list[int]) -> dict:
    config = {"kind": "multi-model", "members": member_names, "exit_layers": list(exit_layers)}
    write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return config
