"""Which Hugging Face backbones `sweet` can put exits on, where their parts live, and how an exit reads them.

Exits are attached with forward hooks on the backbone's layer modules, so the stock modeling code of
transformers runs unchanged. An architecture is supported when its layers sit in one ``nn.ModuleList``, each
layer takes the hidden state as its first argument and returns it (alone or first in a tuple), and every other
per-example tensor a layer receives has the batch as its first dimension (so the early-exit runner can drop the
rows that have left). Adding one is one ``Backbone`` entry.

No torch at import: the configuration check (``sweet.plan.config``) reads this registry while snakemake plans.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sweet.errors import UserError

if TYPE_CHECKING:
    from torch import nn

# How an exit turns the hidden states [batch, seq, hidden] into one vector per example (``sweet.model.pool``):
# "cls" the first non-padding token (the paper's), "mean" the mean over non-padding tokens, "last" the last
# non-padding token. Padding is read from the attention mask, so left and right padding both work.
POOLINGS = ("cls", "mean", "last")

# The shape of an exit head after pooling (``sweet.model.ExitHead``), each the stock sequence classifier's head of
# the architectures that use it:
#   "tanh-pooler"         BERT: dense + tanh → dropout → linear (the reference's exit)
#   "context-pooler"      DeBERTa(-v2): ContextPooler (dropout → dense → ``pooler_hidden_act``) → dropout → linear
#   "classification-head" RoBERTa, ELECTRA: dropout → dense → ``head_activation`` → dropout → linear
#   "prediction-head"     ModernBERT: dense → activation → LayerNorm → dropout → linear
#   "score"               decoders: one bias-free linear layer
HEADS = ("tanh-pooler", "context-pooler", "classification-head", "prediction-head", "score")
# Folders saved before exits took each architecture's stock head have no "head" in sweet_config.json: every
# BERT-like encoder then had BERT's tanh pooler, and they load with the shape they were trained with.
_HEADS_BEFORE_STOCK_SHAPES = {"context-pooler": "tanh-pooler", "classification-head": "tanh-pooler"}


@dataclass(frozen=True)
class Backbone:
    """Where an ``AutoModel`` of one ``model_type`` keeps the pieces `sweet` hooks into, and how its exits look."""

    layers: str  # dotted path to the nn.ModuleList of transformer layers
    embeddings: str = "embeddings"  # the module before layer 1 (part of SWEET's first block)
    # The AutoModel's [CLS] pooler dense layer that a "tanh-pooler" exit starts from (and ``shared_pooler`` shares),
    # if it has one: BERT's, which its stock classifier uses. RoBERTa's stock classifier ignores its pooler; the
    # entry is read only by RoBERTa folders saved before its exits had the stock head.
    pooler: str | None = None
    head: str = "tanh-pooler"  # one of HEADS: what every exit (and the stock classifier) puts after the pooling
    head_activation: str | None = None  # "classification-head": the stock head's activation (an ACT2FN name)
    # A module of the stock sequence classifier, outside the AutoModel, that a checkpoint may have pretrained
    # (ModernBERT's masked-LM `head`, which the stock classifier reuses; DeBERTa's `pooler`, which fine-tuned
    # checkpoints carry): every exit head starts from it where the checkpoint has it, fresh otherwise.
    pretrained_head: str | None = None
    # How the stock classifier initialises what it adds to the AutoModel; the exits' new layers are initialised
    # alike, so EE's last exit starts where a single-exit fine-tune (and an MM member) does. "normal":
    # N(0, initializer_range) on every new linear layer (BERT, RoBERTa, ELECTRA, DeBERTa, Qwen2). "modernbert":
    # normals truncated at ± initializer_cutoff_factor σ, the prediction head's dense at
    # initializer_range / √(2 · layers), the classifier at hidden_size^-½ (ModernBertPreTrainedModel._init_weights).
    head_init: str = "normal"
    # The norm the stock model applies after its *last* layer only. Intermediate layers' outputs are not
    # normalised, so every exit gets its own copy, initialised from the pretrained one, and applies it before
    # pooling: exit k then sees what the stock classifier truncated to L_k layers would, and SWEET shares
    # nothing (a shared norm would take gradient from every exit).
    final_norm: str | None = None
    causal: bool = False  # decoder: token i sees tokens ≤ i, so "cls" pooling would read a one-token prefix
    default_pooling: str = "cls"  # when the configuration names none
    # Poolings the stock ``…ForSequenceClassification`` does itself (an MM member is then the stock class), and
    # the config option that selects among them (ModernBERT's ``classifier_pooling``).
    stock_poolings: tuple[str, ...] = ("cls",)
    stock_pooling_option: str | None = None
    gated_mlp: bool = False  # GLU feed-forward (three d×f matrices instead of two), for the FLOPs count
    embedding_flops: int = 7  # FLOPs per token and hidden unit before layer 1 (BERT: add 3 lookups, LayerNorm)
    shared_across_layers: tuple[str, ...] = ()  # parameters every layer reads (reported by the separation audit)
    # A module the encoder applies to layer 1's output before layer 2 (and the stock ``hidden_states[1]``) sees
    # it: DeBERTa-v2's optional convolution (``conv_kernel_size`` > 0, e.g. deberta-v2-xlarge). Where the
    # checkpoint has it, "after layer 1" means after it, so exit 1, SWEET's cut and the early-exit runner hook it.
    after_first_layer: str | None = None
    # Layer keyword arguments that are the same for every example although their first dimension may equal the
    # batch size (DeBERTa's relative-position table has 2·buckets rows): the early-exit runner never cuts them.
    rowless_layer_kwargs: tuple[str, ...] = ()


_DEBERTA_TABLES = ("rel_embeddings", "relative_pos")

BACKBONES: dict[str, Backbone] = {
    "bert": Backbone(layers="encoder.layer", pooler="pooler.dense"),
    # RobertaClassificationHead: its dense is new in the stock classifier (not the AutoModel's pooler).
    "roberta": Backbone(
        layers="encoder.layer", pooler="pooler.dense", head="classification-head", head_activation="tanh"
    ),
    # ElectraClassificationHead: GELU where BERT has tanh (fixed in the stock code, whatever hidden_act is).
    "electra": Backbone(layers="encoder.layer", head="classification-head", head_activation="gelu"),
    "deberta": Backbone(
        layers="encoder.layer",
        head="context-pooler",
        pretrained_head="pooler",
        shared_across_layers=("encoder.rel_embeddings",),
        rowless_layer_kwargs=_DEBERTA_TABLES,
    ),
    # DeBERTa-v3 checkpoints are model_type "deberta-v2".
    "deberta-v2": Backbone(
        layers="encoder.layer",
        head="context-pooler",
        pretrained_head="pooler",
        shared_across_layers=("encoder.rel_embeddings", "encoder.LayerNorm"),
        after_first_layer="encoder.conv",
        rowless_layer_kwargs=_DEBERTA_TABLES,
    ),
    # ModernBERT (transformers ≥ 4.48): pre-norm layers with rotary positions, alternating global and sliding-window
    # attention, a final norm after the last layer only. transformers 5 runs it padded with a 4-D mask per layer
    # type (no unpadding), sdpa on CPU.
    "modernbert": Backbone(
        layers="layers",
        head="prediction-head",
        pretrained_head="head",
        head_init="modernbert",
        final_norm="final_norm",
        stock_poolings=("cls", "mean"),
        stock_pooling_option="classifier_pooling",
        gated_mlp=True,
        embedding_flops=5,  # one lookup and a LayerNorm
    ),
    # Qwen2 decoders (Qwen2 / Qwen2.5): causal attention, rotary positions, grouped-query attention, RMSNorm after
    # the last layer; the stock classifier scores the last non-padding token.
    "qwen2": Backbone(
        layers="layers",
        embeddings="embed_tokens",
        head="score",
        final_norm="norm",
        causal=True,
        default_pooling="last",
        stock_poolings=("last",),
        gated_mlp=True,
        embedding_flops=0,  # a lookup
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


def resolve_pooling(model_type: str, pooling: str | None, field: str = "pooling") -> str:
    """The pooling an exit of this architecture uses: ``pooling`` checked, or the architecture's default."""
    spec = backbone_spec(model_type)
    if pooling is None:
        return spec.default_pooling
    if pooling not in POOLINGS:
        raise UserError(f"{field}: '{pooling}' is not a pooling; use one of {', '.join(POOLINGS)}")
    if pooling == "cls" and spec.causal:
        raise UserError(
            f"{field}: 'cls' reads the first token, which the causal decoder '{model_type}' computes before seeing "
            "the rest of the input; use last (its stock classifier's) or mean"
        )
    return pooling


def resolve_head(model_type: str, head: str | None, saved_folder: bool = False) -> str:
    """The exit-head shape: the architecture's stock one when ``head`` is None (a folder saved before the key
    existed: the shape it was trained with), else ``head`` checked against what this architecture can build."""
    stock = backbone_spec(model_type).head
    if head is None:
        return _HEADS_BEFORE_STOCK_SHAPES.get(stock, stock) if saved_folder else stock
    allowed = {stock, _HEADS_BEFORE_STOCK_SHAPES.get(stock, stock)}
    if head not in allowed:
        raise UserError(f"head: '{head}' is not an exit head {model_type} builds; use {' or '.join(sorted(allowed))}")
    return head


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    return get_module(backbone, backbone_spec(backbone.config.model_type).layers)


def embedding_module(backbone: nn.Module) -> nn.Module:
    """The module that turns ids into layer 1's input (the start of SWEET's first block)."""
    return get_module(backbone, backbone_spec(backbone.config.model_type).embeddings)


def final_norm(backbone: nn.Module) -> nn.Module | None:
    """The norm the stock model applies after its last layer only, where the architecture has one."""
    path = backbone_spec(backbone.config.model_type).final_norm
    return None if path is None else get_module(backbone, path)


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


def truncation(config: object, depth: int) -> dict:
    """Config overrides that cut a checkpoint to its first ``depth`` layers (per-layer lists cut with it, so the
    saved config stays valid: transformers checks ``len(layer_types) == num_hidden_layers`` on load)."""
    overrides: dict = {"num_hidden_layers": depth}
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        overrides["layer_types"] = list(layer_types)[:depth]
    return overrides


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
    from transformers import AutoConfig, AutoModel, AutoTokenizer

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
        # The special tokens are the tokenizer's: architecture defaults (e.g. ModernBERT's pad id 50283) would
        # point outside a small vocabulary.
        special = {
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id, "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        }
        try:
            config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **{**special, **spec})
        except (TypeError, ValueError) as err:
            raise UserError(f"backbone: invalid inline config ({err})") from None
        torch.manual_seed(seed)
        AutoModel.from_config(config).save_pretrained(tmp)
        # transformers 5 loads some model types' own tokenizer class from a model folder whatever the folder's
        # tokenizer_config says (Qwen2's byte-level BPE for "qwen2"): the word tokenizer would silently be lost.
        probe = " ".join(vocabulary()[:8])
        if AutoTokenizer.from_pretrained(str(tmp))(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
            raise UserError(
                f"backbone.tokenizer: transformers replaces the synthetic tokenizer by its own for model_type "
                f"'{model_type}'; use an encoder type inline, or point backbone: at a checkpoint folder"
            )
