"""The segmented (compiled) early-exit runner gives the offline simulation's answers.

Plain segments (the segment logic run as Python) on every architecture and method family of ``test_infer``, every
rule, batch sizes 1, 7 and 32; the same through dynamo with its cheap "eager" backend on BERT (EE and MM) and
ModernBERT; inductor once (slow: compiling for real takes minutes on a shared CPU). Padding to a bucket changes
nothing; rows that leave are compacted into the smaller bucket; a backbone the segments cannot follow, and a rule
without a device version, fall back to the hook runner. (Each rule's device version against its numpy verdict:
tests/test_exits.py.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_infer import CASES, IDS, TEMPERATURES, N, _offline, _thresholds, build_case
from tiny import backbone, pad_id, random_features

import sweet.compiled
from sweet import EarlyExitModel
from sweet.compiled import Buckets, SegmentedRunner, pad_to_bucket, resolve_precision
from sweet.errors import UserError
from sweet.evaluate import exit_logits
from sweet.exits import EXIT_RULES, calibrated_probs
from sweet.infer import early_exit


@pytest.fixture
def case(request, tmp_path_factory) -> dict:
    return build_case(request.param, tmp_path_factory)


def _check(c: dict, rule_name: str, threshold: float, batch_size: int, compile: bool | str) -> np.ndarray:
    runner = SegmentedRunner(c["model"], batch_size, compile, static_shapes=True)  # the buckets of the compiled path
    assert runner.fallback_reason is None
    result = runner.run(c["features"], EXIT_RULES[rule_name], threshold, TEMPERATURES, c["pad"])
    preds, exits = _offline(c, rule_name, threshold)
    assert result.exits.tolist() == exits.tolist(), (rule_name, threshold, batch_size)
    assert result.predictions.tolist() == preds.tolist(), (rule_name, threshold, batch_size)
    probs = calibrated_probs(c["logits"], TEMPERATURES)[exits, np.arange(N)]
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-5)
    return exits


# DeBERTa-v2 with its layer-1 convolution falls back to the hook runner (test_backbone_with_work_between_layers…)
SEGMENTED = [(c, i) for c, i in zip(CASES, IDS) if c[1] != "deberta-v2-conv"]


@pytest.mark.parametrize("case", [c for c, _ in SEGMENTED], indirect=True, ids=[i for _, i in SEGMENTED])
def test_segments_equal_offline(case):
    """Every rule at the thresholds that split exit 1, batch sizes 1, 7 and 32."""
    seen: set[int] = set()
    for rule_name in EXIT_RULES:
        thresholds = _thresholds(case, rule_name)[-3:] if rule_name != "patience" else [0.0, 1.0]
        for threshold in thresholds[::2]:
            for batch_size in (1, 7, 32):
                seen |= set(_check(case, rule_name, threshold, batch_size, compile=False).tolist())
    assert len(seen) >= 2  # some threshold splits the examples between exits


# Tracing costs seconds per segment and shape on a shared CPU: EE on BERT in the quick suite, the rest slow.
DYNAMO = [
    pytest.param(("ee", "bert", None), id="ee-bert"),
    pytest.param(("mm", "bert", None), id="mm-bert", marks=pytest.mark.slow),
    pytest.param(("sweet", "modernbert", None), id="sweet-modernbert", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", DYNAMO, indirect=True)
def test_dynamo_segments_equal_offline(case, request):
    """The same segments traced by dynamo (its "eager" backend: the graph logic without inductor's codegen), at
    batch 7 (buckets 7, 4, 2, 1 as rows leave)."""
    threshold = _thresholds(case, "confidence")[-2]
    exits = _check(case, "confidence", threshold, 7, compile="eager")
    assert len(set(exits.tolist())) > 1
    if "slow" in request.keywords:
        _check(case, "patience", 1.0, 7, compile="eager")


@pytest.mark.parametrize("case", [("ee", "bert", None)], indirect=True, ids=["ee-bert"])
def test_cpu_dynamic_shapes_compile_each_segment_once(case, monkeypatch):
    """The CPU's compiled path (dynamic shapes, unpadded; dynamo's eager backend standing in for inductor): after
    ``warm_up`` every length and batch size reuses the graphs, and the answers are the offline simulation's."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(sweet.compiled, "CPU_BACKEND", "eager")
    runner = SegmentedRunner(case["model"], 7, compile=True)
    assert runner.compiled and not runner.buckets.static
    lengths = [len(f["input_ids"]) for f in case["features"]]
    assert runner.warm_up(lengths, EXIT_RULES["confidence"], TEMPERATURES, case["pad"]) > 0
    assert runner.warm_up([3, 40], EXIT_RULES["confidence"], TEMPERATURES, case["pad"]) == 0.0  # nothing new
    graphs = counters["stats"]["unique_graphs"]
    for threshold in _thresholds(case, "confidence")[-3:]:
        result = runner.run(case["features"], EXIT_RULES["confidence"], threshold, TEMPERATURES, case["pad"])
        preds, exits = _offline(case, "confidence", threshold)
        assert result.exits.tolist() == exits.tolist() and result.predictions.tolist() == preds.tolist()
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation: rows left, lengths and batches varied


@pytest.mark.slow
@pytest.mark.parametrize("case", [("ee", "bert", None)], indirect=True, ids=["ee-bert"])
def test_inductor_segments_equal_offline(case):
    """Inductor for real: static shapes (the CUDA path's buckets) at batch 1, dynamic shapes (the CPU's) at 7."""
    threshold = _thresholds(case, "confidence")[-2]
    _check(case, "confidence", threshold, 1, compile="inductor")
    runner = SegmentedRunner(case["model"], 7, compile=True)
    assert runner.settings == {"backend": "inductor", "dynamic": True}
    result = runner.run(case["features"], EXIT_RULES["confidence"], threshold, TEMPERATURES, case["pad"])
    preds, exits = _offline(case, "confidence", threshold)
    assert result.exits.tolist() == exits.tolist() and result.predictions.tolist() == preds.tolist()


def test_bucket_padding_changes_nothing(tmp_path_factory):
    torch.manual_seed(3)
    model = EarlyExitModel.from_pretrained(backbone("bert", tmp_path_factory), num_labels=3, exit_layers=[1, 2, 4])
    model.eval()
    features = random_features(6, 20, seed=5)
    rule, temperatures = EXIT_RULES["confidence"], np.ones(3)
    threshold = 0.5
    alone = [SegmentedRunner(model, 1, False).run([f], rule, threshold, temperatures) for f in features]
    for seq_multiple in (1, 16, 64):
        for batch_size in (1, 4, 6):
            runner = SegmentedRunner(model, batch_size, False, seq_multiple, static_shapes=True)
            out = runner.run(features, rule, threshold, temperatures)
            assert out.exits.tolist() == [a.exits[0] for a in alone]
            assert out.predictions.tolist() == [a.predictions[0] for a in alone]
            np.testing.assert_allclose(out.probabilities, np.concatenate([a.probabilities for a in alone]), atol=1e-5)
    reference = early_exit(model, features, rule, threshold, temperatures, batch_size=1)
    assert reference.exits.tolist() == [a.exits[0] for a in alone]


def test_buckets_and_padding():
    buckets = Buckets(max_batch=32, seq_multiple=16)
    assert [buckets.batch(n) for n in (1, 2, 3, 5, 9, 17, 32)] == [1, 2, 4, 8, 16, 24, 32]
    assert Buckets(7).all_batches() == [1, 2, 4, 7]
    assert Buckets(32, static=False).batch(5) == 5 and Buckets(32, static=False).seq(5) == 5
    assert [buckets.seq(n) for n in (1, 16, 17)] == [16, 16, 32]
    batch = {"input_ids": torch.tensor([[3, 5, 6], [3, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    padded = pad_to_bucket(batch, 4, 5, pad_token_id=0)
    assert padded["input_ids"].tolist() == [[3, 5, 6, 0, 0], [3, 7, 0, 0, 0], [3, 7, 0, 0, 0], [3, 7, 0, 0, 0]]
    assert padded["attention_mask"][:, 3:].sum() == 0


def test_rows_that_leave_are_compacted_into_a_smaller_bucket(tmp_path_factory):
    torch.manual_seed(3)
    model = EarlyExitModel.from_pretrained(backbone("bert", tmp_path_factory), num_labels=2, exit_layers=[1, 2, 4])
    model.eval()
    with torch.no_grad():
        for head in model.heads:
            head.classifier.weight.mul_(5)
    features = random_features(16, 12, seed=4)
    runner = SegmentedRunner(model, 16, False, static_shapes=True)
    rule, temperatures = EXIT_RULES["confidence"], np.ones(3)
    first = calibrated_probs(exit_logits(model, features, batch_size=16)[0][:1])[0].max(axis=-1)
    threshold = float(np.sort(first)[4] + 1e-9)  # 11 of 16 rows leave at exit 1: 5 go on, in a bucket of 8
    rows: list[int] = []
    handle = model.layers[1].register_forward_hook(lambda m, a, out: rows.append(
        (out[0] if isinstance(out, tuple) else out).shape[0]))
    try:
        out = runner.run(features, rule, threshold, temperatures)
    finally:
        handle.remove()
    assert int((out.exits > 0).sum()) == 5
    # layer 2's calls: the capture pass (its recorder, which computes nothing, sees the whole batch), then exit 2's
    # segment on the 5 rows padded to the bucket of 8
    assert rows == [16, 8]


def test_backbone_with_work_between_layers_falls_back(tmp_path_factory):
    torch.manual_seed(0)
    model = EarlyExitModel.from_pretrained(backbone("deberta-v2-conv", tmp_path_factory), num_labels=2,
                                           exit_layers=[1, 3]).eval()
    runner = SegmentedRunner(model, 4, False)
    assert "convolution" in runner.fallback_reason
    features = random_features(5, 9, seed=2)
    rule = EXIT_RULES["confidence"]
    out = runner.run(features, rule, 0.6, np.ones(2), pad_id("deberta-v2-conv"))
    ref = early_exit(model, features, rule, 0.6, np.ones(2), 4, pad_id("deberta-v2-conv"))
    assert out.exits.tolist() == ref.exits.tolist() and out.predictions.tolist() == ref.predictions.tolist()


def test_rule_without_a_device_version_runs_on_the_hook_runner(tmp_path_factory):
    """A registry entry with only its numpy verdict (no ``fires_device``) still answers through the runner."""
    torch.manual_seed(0)
    model = EarlyExitModel.from_pretrained(backbone("bert", tmp_path_factory), num_labels=2, exit_layers=[1, 3]).eval()
    features = random_features(6, 9, seed=4)
    rule = dataclasses.replace(EXIT_RULES["confidence"], name="numpy-only", fires_device=None)
    runner = SegmentedRunner(model, 4, False)
    runner.segments.function = None  # the segments must not be called
    out = runner.run(features, rule, 0.6, np.ones(2))
    ref = early_exit(model, features, EXIT_RULES["confidence"], 0.6, np.ones(2), 4)
    assert out.exits.tolist() == ref.exits.tolist() and out.predictions.tolist() == ref.predictions.tolist()


def test_half_precision_needs_a_gpu():
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    with pytest.raises(UserError, match="precision: bf16 needs a CUDA device"):
        resolve_precision("bf16", torch.device("cpu"))
    with pytest.raises(UserError, match="precision: 'fp8' unknown"):
        resolve_precision("fp8", torch.device("cpu"))
