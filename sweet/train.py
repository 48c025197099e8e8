"""Fine-tuning with the Hugging Face Trainer: EE and SWEET models, or one Multi-Model member.

Read top to bottom: the Trainer subclass that logs each exit's loss and optionally runs the gradient-conflict probe
(``sweet.conflict_probe``), and ``train`` which wires data, model and Trainer together, resumes from the last
checkpoint after a kill or a signal (``sweet.resume``), and writes the model atomically. The hyper-parameters are
``sweet.plan.settings.TrainSpec`` (planning reads their defaults too); tracking is ``sweet.tracking``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
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
from sweet.batches import encode
from sweet.conflict_probe import gradient_conflict
from sweet.errors import UserError
from sweet.io import atomic_dir, write_csv, write_json
from sweet.losses import method_loss
from sweet.model import EarlyExitModel
from sweet.multimodel import MemberModel
from sweet.plan.layout import tracking_dir
from sweet.plan.settings import TrainSpec
from sweet.provenance import provenance
from sweet.resume import CONFLICT_ROWS, CheckpointOnSignal, TrainingInterrupted, last_complete_checkpoint
from sweet.tracking import require_tracking_package, tracking_environment


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
