"""Separation audit: which parameters receive gradient from more than one exit?

For SWEET the answer should be "none" apart from what the architecture shares by construction (DeBERTa's
relative-position embeddings, read by every layer) or what the user chose to share (the reference's single
pooler). A final norm the stock model applies after its last layer (ModernBERT, decoders) is not shared: every
exit has its own copy. For EE nearly every backbone parameter is shared, which is the conflict SWEET removes.
The audit runs the real model on a small random batch of varied lengths (padded, so the pooling reads the
attention mask as in training) and checks each exit's loss gradient separately.
"""

from __future__ import annotations

import torch

from sweet.backbones import backbone_spec
from sweet.errors import UserError
from sweet.methods import boundary_scales
from sweet.model import EarlyExitModel


def exit_gradients(model: EarlyExitModel, batch: dict[str, torch.Tensor]) -> list[set[str]]:
    """For each exit, the names of the parameters its loss gives a non-zero gradient."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    out = model(**batch)
    touched = []
    for k in range(model.num_exits):
        grads = torch.autograd.grad(out.exit_losses[k], params, retain_graph=True, allow_unused=True)
        touched.append({n for n, g in zip(names, grads) if g is not None and bool(g.abs().sum() > 0)})
    return touched


def separation_audit(model: EarlyExitModel, vocab_size: int, batch_size: int = 4, seq_len: int = 16, seed: int = 0) -> dict:
    """Parameters reached by more than one exit's loss, with the exits that reach each (1-based)."""
    generator = torch.Generator().manual_seed(seed)
    low = min(5, vocab_size - 1)  # skip the first ids, which are special tokens in every supported vocabulary
    device = next(model.parameters()).device
    lengths = torch.randint(2, seq_len + 1, (batch_size,), generator=generator)
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    pad = model.backbone.config.pad_token_id or 0
    ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator).masked_fill(mask == 0, pad)
    batch = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": torch.randint(0, model.config.num_labels, (batch_size,), generator=generator).to(device),
    }
    was_training = model.training
    model.eval()  # no dropout: the audit is about which paths exist, not about noise
    try:
        touched = exit_gradients(model, batch)
    finally:
        model.train(was_training)
    shared = {}
    for name, _ in model.named_parameters():
        exits = [k + 1 for k, names in enumerate(touched) if name in names]
        if len(exits) > 1:
            shared[name] = exits
    return {
        "method": model.config.method,
        "exit_layers": model.exit_layers,
        "shared_pooler": model.config.shared_pooler,
        "pooling": model.pooling,
        "n_parameters_shared": len(shared),
        "shared": shared,
    }


def declared_shared(model: EarlyExitModel) -> set[str]:
    """Parameter names every exit may reach under SWEET: what the registry says every layer reads
    (``Backbone.shared_across_layers``) and the one pooler ``shared_pooler`` asks for."""
    model_type = model.backbone.config.model_type
    prefixes = tuple(f"backbone.{path}." for path in backbone_spec(model_type).shared_across_layers)
    names = {name for name, _ in model.named_parameters() if name.startswith(prefixes)}
    pooler = model.pooler_for_shared_heads()
    if pooler is not None:
        ids = {id(p) for p in pooler.parameters()}
        names |= {name for name, p in model.named_parameters() if id(p) in ids}
    return names


def require_separation(model: EarlyExitModel, report: dict) -> None:
    """Refuse a SWEET model whose audit finds a parameter reached by two exits that nothing declares shared: its
    exits' gradients would mix, so the run would not be SWEET (a registry entry hooks the wrong module, or misses
    a module the encoder applies between layers, or a table every layer reads)."""
    scales = boundary_scales(model.config.method, model.num_exits, model.config.method_options)
    if any(onward for _, onward in scales[:-1]):
        return  # gradient crosses some exit boundary by design: nothing to enforce
    allowed = declared_shared(model)
    leaks = {name: exits for name, exits in report["shared"].items() if name not in allowed}
    if not leaks:
        return
    name, exits = next(iter(leaks.items()))
    model_type = model.backbone.config.model_type
    more = f" (and {len(leaks) - 1} more parameters)" if len(leaks) > 1 else ""
    raise UserError(
        f"{model.config.method}: parameter '{name}' receives gradient from exits {', '.join(map(str, exits))}{more}, "
        f"so the method's blocks are not separated; fix sweet.backbones.BACKBONES['{model_type}'] (layers / after_first_layer "
        "must name the modules whose outputs are the exits' hidden states; a parameter every layer reads belongs "
        "in shared_across_layers)"
    )
