"""A deployable early-exit classifier: an exported folder (``sweet.export``) loaded for prediction.

``load_classifier(folder).predict(texts)`` tokenises as training did (the tokenizer saved with the model, with
training's ``max_length``) and runs the real early-exit runner (``sweet.infer``) at the folder's exit policy: its
rule, threshold and the temperatures the policy was measured with. Each text gets the label (the task's name for
it, and its id), the temperature-scaled probabilities at the exit taken, and the exit.

``compile``: "auto" (the default) runs the compiled segments of ``sweet.compiled`` on a GPU (CUDA graphs) and the
hook runner elsewhere, where compiling costs more than it saves for a few calls; True / False force either. Each
shape is compiled the first time a call needs it (``warm_up_seconds`` adds up that time): on a GPU each (batch,
length) bucket, on a CPU (dynamic shapes) batch 1 and the full batch once.
``precision``: fp32, or bf16 / fp16 on a GPU (the weights are cast once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweet.errors import UserError
from sweet.export import FORMAT, POLICY_NAME

TextInput = str | tuple[str, str] | list[str]


@dataclass(frozen=True)
class Prediction:
    """One text's answer."""

    label: str  # the task's label name (the id as text where the task has none)
    label_id: int
    probabilities: tuple[float, ...]  # temperature-scaled, at the exit taken, one per label id
    exit: int  # 1-based exit number
    exit_layer: int  # layers computed before answering ("after layer k"; MM: the answering member's depth)


class EarlyExitClassifier:
    """An exported model with its exit policy; ``predict`` stops computing at each text's exit."""

    def __init__(self, folder: str | Path, compile: bool | str = "auto", precision: str = "fp32") -> None:
        from sweet.batches import load_tokenizer, model_device
        from sweet.compiled import resolve_precision
        from sweet.evaluate import load_model
        from sweet.exits import EXIT_RULES

        self.folder = Path(folder)
        policy_path = self.folder / POLICY_NAME
        if not policy_path.is_file():
            raise UserError(f"{self.folder}: no {POLICY_NAME}; give a folder written by `python -m sweet export`")
        try:
            self.policy: dict[str, Any] = json.loads(policy_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{policy_path}: not valid JSON ({err.msg} at line {err.lineno}); re-export") from None
        if self.policy.get("format") != FORMAT:
            raise UserError(f"{policy_path}: format {self.policy.get('format')!r} is not {FORMAT!r}; re-export with "
                            "this version of sweet")
        self.rule = EXIT_RULES[self.policy["rule"]]
        self.threshold = float(self.policy["threshold"])
        self.temperatures = np.asarray(self.policy["temperatures"], dtype=np.float64)
        self.label_names: list[str] = list(self.policy["task"]["label_names"])
        self.has_text_pair = bool(self.policy["task"]["has_text_pair"])
        self.model = load_model(self.folder)
        device = model_device(self.model)
        if compile not in (True, False, "auto"):
            raise UserError(f"compile: {compile!r} must be auto, True or False")
        self.compiled = device.type == "cuda" if compile == "auto" else bool(compile)
        self.precision = precision
        self.model.to(resolve_precision(precision, device))
        self._runners: dict[int, Any] = {}  # batch size → sweet.compiled.SegmentedRunner
        self.warm_up_seconds = 0.0  # compiling / capturing, summed over every bucket so far
        self.tokenizer = load_tokenizer(self.folder)
        self.exit_layers = [int(k) for k in self.model.exit_layers]
        if len(self.temperatures) != len(self.exit_layers):
            raise UserError(f"{policy_path}: {len(self.temperatures)} temperatures for {len(self.exit_layers)} exits; "
                            "re-export")

    def _compiled_runner(self, features: list[dict], batch_size: int, pad: int) -> Any:
        """The runner for ``batch_size``, with every shape these features need compiled (once per shape)."""
        from sweet.compiled import SegmentedRunner

        runner = self._runners.get(batch_size)
        if runner is None:
            runner = self._runners[batch_size] = SegmentedRunner(self.model, batch_size, compile=True)
        lengths = sorted({len(f["input_ids"]) for f in features})
        self.warm_up_seconds += runner.warm_up(lengths, self.rule, self.temperatures, pad)
        return runner

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def features(self, texts: Sequence[TextInput]) -> list[dict]:
        """Token ids per text, as training and evaluation tokenised (``sweet.batches.encode``)."""
        from sweet.batches import encode

        rows = []
        for i, text in enumerate(texts):
            if isinstance(text, str):
                rows.append({"text": text})
            elif isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, str) for t in text):
                rows.append({"text": text[0], "text_pair": text[1]})
            else:
                raise UserError(f"texts[{i}]: {text!r} is neither a text nor a (text, text_pair) pair")
        paired = {"text_pair" in r for r in rows}
        if len(paired) > 1:
            raise UserError("texts: mix of single texts and pairs; give one kind")
        if rows and paired != {self.has_text_pair}:
            wanted = "(text, text_pair) pairs" if self.has_text_pair else "single texts"
            raise UserError(f"texts: this classifier was trained on {wanted}; give those")
        return encode(rows, self.tokenizer)

    def predict(self, texts: Sequence[TextInput], batch_size: int = 32) -> list[Prediction]:
        """One ``Prediction`` per text (or text pair), in order."""
        from sweet.infer import early_exit

        if isinstance(texts, str):
            raise UserError("texts: give a list of texts, not one string")
        if batch_size < 1:
            raise UserError(f"batch_size: {batch_size} must be ≥ 1")
        features = self.features(texts)
        if not features:
            return []
        pad = self.tokenizer.pad_token_id or 0
        if self.compiled:
            result = self._compiled_runner(features, batch_size, pad).run(
                features, self.rule, self.threshold, self.temperatures, pad)
        else:
            result = early_exit(self.model, features, self.rule, self.threshold, self.temperatures, batch_size, pad)
        return [
            Prediction(
                label=self.label_names[p] if p < len(self.label_names) else str(p),
                label_id=int(p),
                probabilities=tuple(float(x) for x in probs),
                exit=int(e) + 1,
                exit_layer=self.exit_layers[e],
            )
            for p, e, probs in zip(result.predictions, result.exits, result.probabilities)
        ]


def load_classifier(folder: str | Path, compile: bool | str = "auto", precision: str = "fp32") -> EarlyExitClassifier:
    """The classifier exported to ``folder`` by ``python -m sweet export`` (or the workflow's ``classifiers``);
    ``compile`` and ``precision`` as ``EarlyExitClassifier`` describes."""
    return EarlyExitClassifier(folder, compile, precision)
