"""MultiModel: independent truncated copies of an encoder, run in sequence until one is confident.

Member k is the checkpoint cut to its first ``exit_layers[k]`` layers (``num_hidden_layers=L_k``) with its own
classification head. Where the stock ``AutoModelForSequenceClassification`` pools the way the run asks (BERT-like
encoders: cls; ModernBERT: cls or mean through ``classifier_pooling``; decoders: the last token), the member *is*
that stock classifier, which any Hugging Face tool loads. Otherwise (e.g. mean pooling on BERT) it is the
truncated stock ``AutoModel`` with one exit head of the same shape as EE's exits: a one-exit ``EarlyExitModel``
(its folder holds a stock ``backbone/`` plus the head), so MM and EE differ only in how the layers are trained.
Members are fine-tuned alone (one job each, so a cluster runs them in parallel) and saved as ``member_<k>/``
folders; the MultiModel folder adds ``sweet_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from sweet.backbones import backbone_spec, check_exit_layers, resolve_pooling, truncation
from sweet.errors import UserError
from sweet.io import write_text
from sweet.model import (
    CONFIG_NAME,
    EarlyExitConfig,
    EarlyExitModel,
    ExitOutput,
    backbone_inputs,
    exit_loss_terms,
    load_backbone,
    pool,
)

LTE_NAME = "lte_head.safetensors"


def member_dir_name(k: int) -> str:
    """Folder of member k (1-based, like exit numbers in every table)."""
    return f"member_{k}"


class MemberModel(nn.Module):
    """One MM member as trained: a classifier of depth L_k plus an optional learned-to-exit head.

    ``classifier`` is the stock sequence classifier, or a one-exit EarlyExitModel where the stock class cannot
    pool as asked (that model then holds the learned-to-exit head itself).
    """

    def __init__(self, classifier: nn.Module, pooling: str = "cls", learned_exit: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.pooling = pooling
        stock = not isinstance(classifier, EarlyExitModel)
        self.lte_head = nn.Linear(classifier.config.hidden_size, 1) if learned_exit and stock else None
        if self.lte_head is not None:
            nn.init.normal_(self.lte_head.weight, std=getattr(classifier.config, "initializer_range", 0.02))
            nn.init.zeros_(self.lte_head.bias)

    @property
    def encoder_config(self) -> Any:
        """The Hugging Face config of the member's (truncated) encoder."""
        if isinstance(self.classifier, EarlyExitModel):
            return self.classifier.backbone.config
        return self.classifier.config

    @property
    def depth(self) -> int:
        return self.encoder_config.num_hidden_layers

    @classmethod
    def from_checkpoint(
        cls,
        name_or_path: str | Path,
        num_labels: int,
        depth: int,
        learned_exit: bool = False,
        pooling: str | None = None,
        pad_token_id: int | None = None,
    ) -> MemberModel:
        """The checkpoint truncated to its first ``depth`` layers, with a fresh head.

        ``pad_token_id``: the tokenizer's, for a decoder whose config lacks one (its stock classifier finds the last
        token through it).
        """
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
        spec = backbone_spec(config.model_type)
        pooling = resolve_pooling(config.model_type, pooling)
        check_exit_layers([depth], config.num_hidden_layers)
        overrides = truncation(config, depth)
        if pooling not in spec.stock_poolings:
            backbone, pretrained_head = load_backbone(name_or_path, **overrides)
            one_exit = EarlyExitConfig([depth], num_labels, "ee", learned_exit=learned_exit, pooling=pooling)
            return cls(EarlyExitModel(one_exit, backbone, pretrained_head), pooling)
        if spec.stock_pooling_option is not None:
            overrides[spec.stock_pooling_option] = pooling
        if pooling == "last" and config.pad_token_id is None:
            if pad_token_id is None:
                raise UserError(
                    f"backbone: '{name_or_path}' has no pad_token_id and none was given; its stock classifier finds "
                    "the last token through it (give the tokenizer's pad token id)"
                )
            overrides["pad_token_id"] = pad_token_id
        classifier = AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), num_labels=num_labels, trust_remote_code=False, **overrides
        )
        return cls(classifier, pooling, learned_exit)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MemberModel:
        folder = Path(folder)
        if (folder / CONFIG_NAME).is_file():
            exits = EarlyExitModel.from_pretrained(folder)
            return cls(exits, exits.pooling)
        classifier = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False)
        model = cls(classifier, stock_pooling(classifier.config), learned_exit=(folder / LTE_NAME).is_file())
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
        if isinstance(self.classifier, EarlyExitModel):
            return self.classifier(input_ids, attention_mask, token_type_ids, labels)
        out = self.classifier(
            **backbone_inputs(self.classifier, input_ids, attention_mask, token_type_ids),
            output_hidden_states=self.lte_head is not None,
        )
        exit_logits = out.logits.unsqueeze(0)
        lte = None
        if self.lte_head is not None:
            # The last hidden state is the stock one (after the final norm where the architecture has one).
            pooled = pool(out.hidden_states[-1], attention_mask, self.pooling).detach()
            lte = torch.sigmoid(self.lte_head(pooled)).squeeze(-1).unsqueeze(0)
        exit_losses = exit_loss_terms(exit_logits, labels, lte) if labels is not None else None
        return ExitOutput(exit_logits=exit_logits, exit_losses=exit_losses, lte_scores=lte)


def stock_pooling(config: Any) -> str:
    """How the stock sequence classifier with this config pools (what a stock member's learned-to-exit head reads)."""
    spec = backbone_spec(config.model_type)
    if spec.stock_pooling_option is not None:
        return getattr(config, spec.stock_pooling_option)
    return spec.stock_poolings[0]


class MultiModel(nn.Module):
    """Members of growing depth; exit k is member k's prediction."""

    def __init__(self, members: list[MemberModel], method: str | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.method = method  # the per-exit method it was trained with, where its folder records one
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
        pooling: str | None = None,
        pad_token_id: int | None = None,
    ) -> MultiModel:
        """A saved MultiModel folder (no other arguments), or a checkpoint and the member depths."""
        folder = Path(name_or_path)
        if (folder / CONFIG_NAME).is_file():
            if num_labels is not None or exit_layers is not None or pooling is not None:
                raise UserError(f"{folder}: a saved MultiModel is restored as saved; pass no other arguments")
            config = json.loads((folder / CONFIG_NAME).read_text())
            if config.get("kind") != "multi-model":
                raise UserError(f"{folder / CONFIG_NAME}: not a MultiModel (kind={config.get('kind')!r})")
            members = [MemberModel.from_pretrained(folder / name) for name in config["members"]]
            return cls(members, config.get("method"))
        if num_labels is None or exit_layers is None:
            raise UserError(f"{name_or_path}: a backbone checkpoint needs num_labels=… and exit_layers=[…]")
        depth = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False).num_hidden_layers
        check_exit_layers(list(exit_layers), depth)
        return cls([
            MemberModel.from_checkpoint(name_or_path, num_labels, d, learned_exit, pooling, pad_token_id)
            for d in exit_layers
        ])

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        names = [member_dir_name(k + 1) for k in range(self.num_exits)]
        for member, name in zip(self.members, names):
            member.save_pretrained(folder / name)
        write_multimodel_config(folder, names, self.exit_layers, self.method)

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
        return ExitOutput(exit_logits=exit_logits, exit_losses=exit_losses, lte_scores=lte)


def write_multimodel_config(folder: Path, member_names: list[str], exit_layers: list[int],
                            method: str | None = None) -> dict:
    """sweet_config.json of a MultiModel folder; ``method``: the per-exit method (sweet.methods) its members were
    trained with, recorded so that a second per-exit method is told apart from MM (folders before: none)."""
    config = {"kind": "multi-model", "members": member_names, "exit_layers": list(exit_layers),
              **({"method": method} if method is not None else {})}
    write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return config
