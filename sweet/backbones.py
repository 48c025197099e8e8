"""Which Hugging Face encoders `sweet` can put exits on, and where their parts live.

Exits are attached with forward hooks on the encoder's layer modules, so the stock modeling code of
transformers runs unchanged. An architecture is supported when its layers sit in one ``nn.ModuleList`` and each
layer receives the batch-shaped attention mask as a positional argument; adding one is one ``Backbone`` entry.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from torch import nn

from sweet.errors import UserError


@dataclass(frozen=True)
class Backbone:
    """Where an ``AutoModel`` of one ``model_type`` keeps the pieces `sweet` hooks into."""

    layers: str  # dotted path to the nn.ModuleList of transformer layers
    pooler: str | None  # dotted path to the pretrained [CLS] pooler's dense layer, if the checkpoint has one
    mask_arg: int = 1  # positional index of the [batch, ...] attention mask in a layer call
    shared_across_layers: tuple[str, ...] = ()  # parameters every layer reads (reported by the separation audit)
    # A module the encoder applies to layer 1's output before layer 2 (and the stock ``hidden_states[1]``) sees
    # it: DeBERTa-v2's optional convolution (``conv_kernel_size`` > 0, e.g. deberta-v2-xlarge). Where the
    # checkpoint has it, "after layer 1" means after it, so exit 1, SWEET's cut and the early-exit runner hook it.
    after_first_layer: str | None = None


BACKBONES: dict[str, Backbone] = {
    "bert": Backbone(layers="encoder.layer", pooler="pooler.dense"),
    "roberta": Backbone(layers="encoder.layer", pooler="pooler.dense"),
    "electra": Backbone(layers="encoder.layer", pooler=None),
    "deberta": Backbone(layers="encoder.layer", pooler=None, shared_across_layers=("encoder.rel_embeddings",)),
    # DeBERTa-v3 checkpoints are model_type "deberta-v2".
    "deberta-v2": Backbone(
        layers="encoder.layer",
        pooler=None,
        shared_across_layers=("encoder.rel_embeddings", "encoder.LayerNorm"),
        after_first_layer="encoder.conv",
    ),
}


def backbone_spec(model_type: str) -> Backbone:
    try:
        return BACKBONES[model_type]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise UserError(
            f"backbone: model_type '{model_type}' is not supported; use one of {known} "
            "(or add an entry to sweet.backbones.BACKBONES)"
        ) from None


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    return get_module(backbone, backbone_spec(backbone.config.model_type).layers)


def first_layer_extra(backbone: nn.Module) -> nn.Module | None:
    """The module applied to layer 1's output inside the encoder, when this checkpoint has one."""
    path = backbone_spec(backbone.config.model_type).after_first_layer
    return None if path is None else find_module(backbone, path)


def layer_output_modules(backbone: nn.Module, exit_layers: list[int]) -> list[nn.Module]:
    """For each 1-based layer count, the module whose output is the hidden state after that many layers."""
    layers = encoder_layers(backbone)
    extra = first_layer_extra(backbone)
    return [extra if layer == 1 and extra is not None else layers[layer - 1] for layer in exit_layers]


def find_module(root: nn.Module, dotted: str) -> nn.Module | None:
    """Like ``get_module``, but None where this checkpoint lacks the module (e.g. no pooler, no convolution)."""
    module: nn.Module | None = root
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def check_exit_layers(exit_layers: list[int] | tuple[int, ...], depth: int, field: str = "exit_layers") -> list[int]:
    """Validate 1-based exit positions against an encoder of ``depth`` layers."""
    layers = list(exit_layers)
    if not layers:
        raise UserError(f"{field}: empty; give at least one layer count, e.g. [1, 4, 6, 12]")
    if any(not isinstance(k, numbers.Integral) or isinstance(k, bool) for k in layers):
        raise UserError(f"{field}: {layers} must be integers (1-based layer counts), e.g. [1, 4, 6, 12]")
    layers = [int(k) for k in layers]
    if layers[0] < 1:
        raise UserError(f"{field}: {layers} counts layers from 1 ('after layer k'); the reference's 0_3_5_11 is [1, 4, 6, 12]")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise UserError(f"{field}: {layers} must be strictly increasing")
    if layers[-1] > depth:
        raise UserError(f"{field}: {layers} goes beyond the backbone's {depth} layers; the last exit must be ≤ {depth}")
    return layers


def init_backbone(spec: dict, out: str) -> None:
    """A randomly initialised backbone folder (config, safetensors, tokenizer) from an inline mapping.

    ``spec`` holds ``model_type``, the usual config sizes, ``tokenizer`` ("synthetic": a word-level vocabulary
    built offline from the synthetic task) and ``seed``. This is how the demo grid runs with no download.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    from sweet.io import atomic_dir

    spec = dict(spec)
    model_type = spec.pop("model_type", None)
    if model_type is None:
        raise UserError("backbone.model_type: missing; an inline backbone needs e.g. model_type: bert")
    backbone_spec(model_type)
    tokenizer_name = spec.pop("tokenizer", "synthetic")
    seed = spec.pop("seed", 0)
    if tokenizer_name != "synthetic":
        raise UserError(f"backbone.tokenizer: '{tokenizer_name}' unknown; inline backbones support 'synthetic'")
    from sweet.synthetic import vocabulary
    from sweet.tokenizer import build_word_tokenizer

    with atomic_dir(out) as tmp:
        tokenizer = build_word_tokenizer(vocabulary(), tmp)
        try:
            config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **spec)
        except (TypeError, ValueError) as err:
            raise UserError(f"backbone: invalid inline config ({err})") from None
        torch.manual_seed(seed)
        AutoModel.from_config(config).save_pretrained(tmp)
