"""Fine-tuning with the Hugging Face Trainer: EE and SWEET models, or one Multi-Model member.

Read top to bottom: the hyper-parameters (``TrainSpec``), the Trainer subclass that logs each exit's loss and
optionally probes gradient conflict, and ``train`` which wires data, model and Trainer together, resumes from the
last checkpoint after a kill, and writes the model atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from sweet import methods
from sweet.audit import require_separation, separation_audit
from sweet.backbones import embedding_module, first_layer_extra
from sweet.batches import encode
from sweet.errors import UserError
from sweet.io import atomic_dir, write_csv, write_json
from sweet.losses import method_loss
from sweet.model import EarlyExitModel, exit_loss_terms
from sweet.multimodel import MemberModel
from sweet.plan.settings import REPORT_TO_PACKAGES, TrainSpec
from sweet.provenance import provenance


# ---------------------------------------------------------------------------------------------- experiment tracking
def require_tracking_package(report_to: str) -> None:
    """Fail in one line, before any model is loaded, when the chosen integration's package is not installed (the
    Trainer would only say so after the model is built, in a traceback)."""
    package = REPORT_TO_PACKAGES[report_to]
    # The Trainer's TensorBoard callback also writes through tensorboardX when that is what is installed
    modules = (package, "tensorboardX") if report_to == "tensorboard" else (package,)
    if package is not None and all(importlib.util.find_spec(m) is None for m in modules):
        raise UserError(f"training.report_to: {report_to} needs the '{package}' package, which is not installed; "
                        f"`pip install {package}` in the training environment, or set training.report_to: none")


def tracking_dir(out: str | Path, member: int | None = None) -> Path:
    """Where a trained model's tracking logs go: ``tracking/`` in the run folder, beside ``model/`` (MM member k:
    ``tracking/member_<k>/``). Not the checkpoint folder: that is removed once training ends (and may be on
    scratch); ``model/`` itself may be deleted once evaluated."""
    out = Path(out)
    if member is None:
        return out.parent / "tracking"
    return out.parent.parent / "tracking" / f"member_{member}"


@contextlib.contextmanager
def tracking_environment(report_to: str, folder: str | Path):
    """The integration's environment while training: logs under ``folder`` and nothing sent over the network
    (compute nodes run offline). Variables the user set are kept: an explicit ``WANDB_MODE=online`` or a tracking
    server is theirs to choose. Restored afterwards, so one process can train several runs."""
    folder = Path(folder).resolve()
    defaults = {
        "none": {},
        "tensorboard": {"TENSORBOARD_LOGGING_DIR": str(folder / "tensorboard")},
        # wandb writes its offline run into WANDB_DIR/wandb/; `wandb sync` uploads it later, from a login node
        "wandb": {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_PROJECT": "sweet"},
        # a local file store: without one, MLflow writes ./mlruns in whatever folder the job started in
        "mlflow": {"MLFLOW_TRACKING_URI": (folder / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": "sweet"},
    }[report_to]
    added = [name for name in defaults if name not in os.environ]
    if defaults:
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


CONFLICT_ROWS = "gradient_conflict_rows.json"


class ExitTrainer(Trainer):
    """The stock Trainer minimising a method's loss (``sweet.losses``) over the model's per-exit losses, plus each
    exit's loss in the logs and the optional gradient-conflict probe."""

    def __init__(self, *args: Any, loss: Callable[..., torch.Tensor] | None = None, conflict_every: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss = loss or (lambda exit_losses, **_: exit_losses.sum())
        self.conflict_every = conflict_every
        self.conflict_rows: list[dict] = []
        self._exit_loss_sum: torch.Tensor | None = None
        self._exit_loss_batches = 0
        self._probed_step = -1

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        step = self.state.global_step
        if self.conflict_every and step % self.conflict_every == 0 and step != self._probed_step:
            self._probed_step = step
            self.conflict_rows += gradient_conflict(self.accelerator.unwrap_model(model), inputs, step)
        outputs = model(**inputs)
        loss = self.loss(exit_losses=outputs.exit_losses, exit_logits=outputs.exit_logits, labels=inputs["labels"],
                         step=step)
        losses = outputs.exit_losses.detach().float()
        self._exit_loss_sum = losses if self._exit_loss_sum is None else self._exit_loss_sum + losses
        self._exit_loss_batches += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._exit_loss_batches and "loss" in logs:
            means = (self._exit_loss_sum / self._exit_loss_batches).tolist()
            logs.update({f"loss_exit_{k + 1}": round(v, 6) for k, v in enumerate(means)})
            self._exit_loss_sum, self._exit_loss_batches = None, 0
        super().log(logs, start_time)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The probe's rows so far go into the checkpoint (before the Trainer's own files: its trainer_state.json,
        # written last, marks the checkpoint complete), so a resumed run's CSV equals an uninterrupted run's.
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / CONFLICT_ROWS, self.conflict_rows)
        super()._save_checkpoint(model, trial)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerunning the same command resumes from it."""

    exit_code = 75  # EX_TEMPFAIL: try again


class CheckpointOnSignal(TrainerCallback):
    """SIGTERM or SIGUSR1 → save a checkpoint at the next logging step, then stop training.

    Slurm sends SIGTERM when a job is cancelled or pre-empted and, with ``--signal=TERM@<seconds>`` (the workflow
    asks for it), that long before the time limit; SIGKILL follows after the cluster's KillWait. Stopping at a
    logging step rather than at once keeps the resumed run's logged losses, and so its training record, identical
    to an uninterrupted run's; logging steps are at most 10 optimizer steps apart, so the checkpoint comes soon.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> CheckpointOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(f"received {self.received}: checkpointing at the next logging step, then stopping",
                  file=sys.stderr, flush=True)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.received and state.global_step % args.logging_steps == 0 and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def gradient_conflict(model: nn.Module, inputs: dict, step: int) -> list[dict]:
    """Cosine between each block's own-exit gradient and every later exit's (and their sum), on one batch.

    Block k holds the layers between exit k-1 and exit k (block 1 also the embeddings). The RNG state is restored
    afterwards, so turning the probe on does not change the training run.
    """
    if not isinstance(model, EarlyExitModel):
        return []
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    # Each exit's loss is rebuilt from the hidden state at its own layer: the model's stacked exit_losses would
    # send exit k's backward pass through every later layer too (with zero gradients). This way it stops at
    # block k: one forward plus Σ_k (layers up to exit k) of backward.
    hidden_at_exit: dict[int, torch.Tensor] = {}

    def capture(k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden_at_exit[k] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [module.register_forward_hook(capture(k)) for k, module in enumerate(model.exit_modules)]
    try:
        model(**{key: value for key, value in inputs.items() if key != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    exit_losses = []
    for k in range(model.num_exits):
        logits, lte = model.exit_head(k, hidden_at_exit[k], inputs.get("attention_mask"))
        exit_losses.append(exit_loss_terms(logits[None], inputs["labels"], None if lte is None else lte[None])[0])
    blocks = block_parameters(model)
    per_exit: list[list[list[torch.Tensor]]] = []  # [exit][block][parameter]
    for k in range(model.num_exits):
        own_blocks = blocks[: k + 1]
        params = [p for block in own_blocks for p in block]
        grads = torch.autograd.grad(exit_losses[k], params, retain_graph=k < model.num_exits - 1, allow_unused=True)
        grads_by_block, start = [], 0
        for block in own_blocks:
            block_grads = grads[start : start + len(block)]
            grads_by_block.append([torch.zeros_like(p) if g is None else g for p, g in zip(block, block_grads)])
            start += len(block)
        per_exit.append(grads_by_block)
    torch.random.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    rows = []
    for b in range(len(blocks)):
        own = per_exit[b][b]
        later = {str(j + 1): per_exit[j][b] for j in range(b + 1, model.num_exits)}
        if len(later) > 1:
            later["sum"] = [sum(gs) for gs in zip(*later.values())]
        for other, grads in later.items():
            rows.append({"step": step, "block": b + 1, "exit": b + 1, "other": other, "cosine": _cosine(own, grads)})
    return rows


def block_parameters(model: EarlyExitModel) -> list[list[nn.Parameter]]:
    """Backbone parameters grouped by block: block 1 = embeddings + layers 1..L_1, block k = layers L_{k-1}+1..L_k."""
    layers = model.layers
    blocks: list[list[nn.Parameter]] = []
    previous = 0
    for k, layer in enumerate(model.exit_layers):
        params = [p for m in layers[previous:layer] for p in m.parameters()]
        if k == 0:
            params = list(embedding_module(model.backbone).parameters()) + params
            extra = first_layer_extra(model.backbone)
            if extra is not None:
                params += list(extra.parameters())
        blocks.append(params)
        previous = layer
    return blocks


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Cosine of two gradients given per parameter (summed per tensor: no concatenated copy of the block)."""
    dot = sum(float((x.float() * y.float()).sum()) for x, y in zip(a, b))
    norm_a = sum(float(x.float().square().sum()) for x in a) ** 0.5
    norm_b = sum(float(y.float().square().sum()) for y in b) ** 0.5
    return dot / (norm_a * norm_b) if norm_a * norm_b > 0 else float("nan")


def train(
    rows: list[dict],
    num_labels: int,
    backbone: str,
    exit_layers: list[int],
    method: str,
    seed: int,
    spec: TrainSpec,
    out: str | Path,
    work_dir: str | Path,
    member: int | None = None,
    pooling: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
    tracking: str | Path | None = None,
    method_options: dict[str, float] | None = None,
) -> dict:
    """Fine-tune on ``rows`` and write the model to ``out``; returns the training record for the metrics file.

    The method (``sweet.methods``) says how: its stages run in order, each a Trainer run minimising the stage's
    loss (``sweet.losses``) over the parameters it trains; ``method_options`` are the method's options.
    ``tracking``: where ``spec.report_to``'s integration logs (default ``tracking_dir(out, member)``).
    ``pooling``: how every exit (and each MM member) pools the hidden states; None is the architecture's default.
    ``backbone`` is a local folder (a hub id is resolved to its cached snapshot first: ``sweet.plan.hub``). A job killed
    or signalled mid-training resumes from the newest complete checkpoint in ``work_dir`` when rerun (of the stage
    it was in: a finished stage is kept in ``work_dir`` and never redone); on SIGTERM or SIGUSR1 it saves one
    first and raises ``TrainingInterrupted``.
    """
    require_tracking_package(spec.report_to)  # before anything slow: a missing package is a one-line fix
    recipe = methods.get(method)
    options = methods.resolve_options(method, method_options, "--method-options")
    set_seed(seed)
    tokenizer = training_tokenizer(backbone, spec.max_length)
    if recipe.per_exit:
        if member is None or not 1 <= member <= len(exit_layers):
            raise UserError(f"--member: {method} trains one member at a time; give 1..{len(exit_layers)}")
        model: nn.Module = MemberModel.from_checkpoint(
            backbone, num_labels, exit_layers[member - 1], spec.learned_exit, pooling, tokenizer.pad_token_id
        )
    else:
        if member is not None:
            raise UserError(f"--member: only per-exit methods ({', '.join(methods.names('per-exit'))}) have members")
        model = EarlyExitModel.from_pretrained(
            backbone, num_labels=num_labels, exit_layers=exit_layers, method=method, pooling=pooling,
            shared_pooler=spec.shared_pooler, learned_exit=spec.learned_exit, method_options=options,
        )
    audit = None
    if isinstance(model, EarlyExitModel):
        # ids that both the tokenizer produces and the embedding table holds (either may be the larger)
        audit = separation_audit(model, vocab_size=min(len(tokenizer), model.backbone.config.vocab_size))
        require_separation(model, audit)  # before the first step: a leaking SWEET run is not worth its GPU hours

    features = encode(rows, tokenizer, spec.max_length)
    work_dir = Path(work_dir)
    history: list[dict] = []
    conflict_rows: list[dict] = []
    steps = 0
    for number, stage in enumerate(recipe.stages, start=1):
        # One stage: its own checkpoints (a single-stage method keeps them in work_dir itself, as always) and,
        # once finished, its model in <stage dir>/done, so a later stage's kill never redoes it.
        stage_dir = _stage_dir(work_dir, recipe, number)
        done = stage_dir / "done"
        if number > 1:
            model = EarlyExitModel.from_pretrained(_stage_dir(work_dir, recipe, number - 1) / "done")
        if (done / "stage.json").is_file():
            stage_record = json.loads((done / "stage.json").read_text())
        else:
            set_seed(seed)  # each stage starts from the same RNG state, whether or not an earlier one was resumed
            prepare_stage(model, stage)
            loss = functools.partial(_stage_loss, stage.loss, list(exit_layers), options)
            stage_record = _run_stage(model, tokenizer, features, spec, seed, stage_dir, loss,
                                      spec.gradient_conflict_every if "gradient_conflict_every" in recipe.reads
                                      else 0, callbacks, tracking if tracking is not None else tracking_dir(out, member))
            if len(recipe.stages) > 1:
                with atomic_dir(done) as tmp:
                    model.save_pretrained(tmp)
                    write_json(tmp / "stage.json", stage_record)
        entries = stage_record["log_history"]
        if len(recipe.stages) > 1:  # one step axis over the stages, each entry saying which stage it is from
            entries = [{**e, "step": e["step"] + steps, "stage": stage.name} for e in entries]
        history += entries
        conflict_rows += stage_record["gradient_conflict"]
        steps += stage_record["global_steps"]
    if len(recipe.stages) > 1:
        model = EarlyExitModel.from_pretrained(done)
        for parameter in model.parameters():
            parameter.requires_grad_(True)

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp / "backbone" if isinstance(model, EarlyExitModel) else tmp)
    shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "method": method,
        **({"method_options": options} if options else {}),
        "member": member,
        "exit_layers": exit_layers,
        "pooling": model.pooling,
        "seed": seed,
        "n_train": len(features),
        "training": dataclasses.asdict(spec),
        "global_steps": steps,
        "train_loss": _mean_logged_loss(history),
        "log_history": history,
        "separation_audit": audit,
        "gradient_conflict": conflict_rows,
        "provenance": provenance(),
    }


def training_tokenizer(backbone: str, max_length: int) -> Any:
    """The backbone's tokenizer as training and evaluation use it: truncating at ``max_length``, padding right."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError) as err:
        raise UserError(
            f"backbone: cannot load a tokenizer from '{backbone}' ({str(err).splitlines()[0]}); give a local model "
            "folder with its tokenizer files, or a Hugging Face hub id"
        ) from None
    tokenizer.model_max_length = max_length  # saved with the model, so evaluation truncates the same way
    # Evaluation pads on the right (sweet.batches); training does too, so an example's positions never depend on
    # its batch (models with absolute positions would shift under left padding, which decoder tokenizers default to).
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"backbone: the tokenizer of '{backbone}' has no pad or end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token  # decoders often ship without one; pooling reads the mask
    return tokenizer


def prepare_stage(model: nn.Module, stage: methods.Stage) -> None:
    """What a stage trains: every parameter, or only the earlier exits (the backbone and the last exit frozen);
    with ``init_early_from_last`` each earlier exit starts as a copy of the fine-tuned last exit."""
    if stage.trains == "all":
        return
    if not isinstance(model, EarlyExitModel):
        raise UserError(f"{stage.name}: a stage that trains the early exits needs an early-exit model")
    last = model.heads[-1]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for k, head in enumerate(model.heads[:-1]):
        if stage.init_early_from_last:
            head.load_state_dict(last.state_dict())
        trainable = [head] + ([model.lte_heads[k]] if model.lte_heads is not None else [])
        for module in trainable:
            for parameter in module.parameters():
                parameter.requires_grad_(True)


def _stage_dir(work_dir: Path, recipe: methods.Method, number: int) -> Path:
    """Stage ``number``'s (1-based) checkpoints: ``work_dir`` itself for a one-stage method, as always."""
    if len(recipe.stages) == 1:
        return work_dir
    return work_dir / f"stage-{number}-{recipe.stages[number - 1].name}"


def _stage_loss(name: str, exit_layers: list[int], options: dict[str, float], **kwargs: Any) -> torch.Tensor:
    return method_loss(name, exit_layers=exit_layers, options=options, **kwargs)


def _run_stage(
    model: nn.Module,
    tokenizer: Any,
    features: list[dict],
    spec: TrainSpec,
    seed: int,
    work_dir: Path,
    loss: Callable[..., torch.Tensor],
    conflict_every: int,
    callbacks: list[TrainerCallback] | None,
    tracking: str | Path,
) -> dict:
    """One Trainer run (resumed from ``work_dir``'s newest complete checkpoint); its log and probe rows."""
    on_gpu = torch.cuda.is_available()
    steps_per_epoch = math.ceil(len(features) / (spec.batch_size * spec.gradient_accumulation_steps))
    args = training_arguments(spec, seed, work_dir, steps_per_epoch, on_gpu)
    with tracking_environment(spec.report_to, tracking):
        trainer = ExitTrainer(
            model=model,
            args=args,
            train_dataset=_ListDataset(features),
            data_collator=DataCollatorWithPadding(tokenizer),
            loss=loss,
            conflict_every=conflict_every,
            callbacks=callbacks,
        )
        resume = last_complete_checkpoint(work_dir)
        if resume:
            print(f"resuming from {resume}", file=sys.stderr, flush=True)
            rows_file = Path(resume) / CONFLICT_ROWS
            trainer.conflict_rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []
        with CheckpointOnSignal() as on_signal:
            trainer.add_callback(on_signal)
            trainer.train(resume_from_checkpoint=resume)
    if on_signal.stopped_at is not None:
        raise TrainingInterrupted(
            f"training stopped on {on_signal.received} at step {on_signal.stopped_at} of {trainer.state.max_steps}; "
            f"checkpoint saved in {work_dir}: rerun the same command (snakemake retries it) to resume"
        )
    return {
        "global_steps": trainer.state.global_step,
        "log_history": [entry for entry in trainer.state.log_history if "loss" in entry],
        "gradient_conflict": trainer.conflict_rows,
    }


def training_arguments(spec: TrainSpec, seed: int, work_dir: str | Path, steps_per_epoch: int,
                       on_gpu: bool) -> TrainingArguments:
    """The Trainer's arguments for ``spec``: checkpoints in ``work_dir``, logging on steps that divide save_steps."""
    return TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=per_device_batch_size(spec.batch_size, torch.cuda.device_count() if on_gpu else 1),
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        num_train_epochs=spec.epochs,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        # transformers 5 has no warmup_ratio: a warmup_steps below 1 is the ratio, ceil(ratio × total steps); 1 or
        # more would be a step count, which from_dict's [0, 1) rules out.
        warmup_steps=spec.warmup_ratio,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        full_determinism=not on_gpu,  # exact on CPU; on GPU deterministic kernels would cost too much speed
        use_cpu=not on_gpu,
        bf16=on_gpu and spec.precision == "bf16",
        fp16=on_gpu and spec.precision == "fp16",
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=1,
        logging_steps=_logging_steps(steps_per_epoch, spec.save_steps),
        report_to=spec.report_to,  # the tracking environment (tracking_environment) keeps it offline
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def per_device_batch_size(batch_size: int, devices: int) -> int:
    """The Trainer splits each step over every visible GPU (DataParallel): keep the configured effective batch."""
    if devices <= 1:
        return batch_size
    if batch_size % devices:
        raise UserError(f"training.batch_size: {batch_size} cannot be split evenly over the {devices} GPUs this job "
                        f"sees; use a batch size divisible by {devices}, or one GPU per job (gpus: 1)")
    return batch_size // devices


def _logging_steps(steps_per_epoch: int, save_steps: int) -> int:
    """About four logs per epoch (at most every 10 steps), on a step count that divides ``save_steps``: a run
    resumed from a checkpoint (periodic, or saved on a signal at a logging step) then logs exactly the same
    averages as an uninterrupted one."""
    steps = max(1, min(10, steps_per_epoch // 4))
    while save_steps % steps:
        steps -= 1
    return steps


def _mean_logged_loss(history: list[dict]) -> float | None:
    """Mean training loss over the logged steps, from the logged interval means (the Trainer's ``training_loss``
    covers only the steps since the last resume)."""
    total, previous = 0.0, 0
    for entry in history:
        total += entry["loss"] * (entry["step"] - previous)
        previous = entry["step"]
    return total / previous if previous else None


def last_complete_checkpoint(work_dir: str | Path) -> str | None:
    """The newest checkpoint a killed job finished writing (the Trainer writes its state file last).

    The Trainer does not write checkpoints atomically, so a job killed while saving leaves a partial folder;
    resuming must skip it rather than crash on it.
    """
    folder = Path(work_dir)
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    )
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            shutil.rmtree(path, ignore_errors=True)
            continue
        if (path / "rng_state.pth").is_file() and (path / "optimizer.pt").is_file():
            return str(path)
    return None


def write_training_record(
    record: dict, metrics_path: str | Path, conflict_path: str | Path | None, meta: dict | None = None
) -> None:
    import pandas as pd

    rows = record.pop("gradient_conflict")
    if conflict_path is not None:
        columns = [*(meta or {}), "step", "block", "exit", "other", "cosine"]
        write_csv(conflict_path, pd.DataFrame([{**(meta or {}), **r} for r in rows], columns=columns))
    write_json(metrics_path, record)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
