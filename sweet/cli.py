"""`python -m sweet <stage>`: the commands the workflow's rules call, one per stage of the data flow.

prepare → init-backbone (or fetch) → split → train (→ combine for MM) → calibrate → evaluate → curves (and
operating-points) → aggregate → figures → report.
User errors end with one line on stderr naming the field and the fix, exit code 2, and no partial output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from sweet import methods  # the method registry: standard library only
from sweet.backbones import POOLINGS  # the registry imports no torch
from sweet.errors import UserError
from sweet.exits import EXIT_RULES  # numpy only
from sweet.plan import layout  # the names of a run's files: standard library only
from sweet.plan.export_policy import POLICIES, RISKS  # torch-free

POOLING_HELP = ("how each exit reads the hidden states: cls (first token), mean (over non-padding tokens) or last "
                "(last non-padding token); default: the backbone's (cls for encoders, last for decoders)")


def _layers_arg(value: str) -> list[int]:
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' must be comma-separated layer counts, e.g. 1,4,6,12") from None


def _meta_arg(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{value}' must be KEY=VALUE")
    return key, val


# ----------------------------------------------------------------------------------------------------------------
def cmd_prepare(args: argparse.Namespace) -> None:
    from sweet.data import prepare_task

    prepare_task(args.task, args.task_spec, args.out)


def cmd_init_backbone(args: argparse.Namespace) -> None:
    from sweet.backbones import init_backbone

    init_backbone(args.model_spec, args.out)


def cmd_split(args: argparse.Namespace) -> None:
    """The training subset (--out) and/or the calibration split (--calibration-out) of one (budget, seed): two
    files, because a new calibration must not look like new training data to the workflow."""
    from sweet.data import load_prepared, make_splits, training_ids
    from sweet.io import write_json

    if not (args.out or args.calibration_out):
        raise UserError("split: give --out (the training subset) and/or --calibration-out (the calibration split)")
    task = load_prepared(args.task_dir)
    if args.out:
        ids = training_ids(len(task.train), args.budget, args.seed)
        write_json(args.out, {"task": task.name, "budget": args.budget, "seed": args.seed,
                              "pool_size": len(task.train), "train_ids": ids})
    if args.calibration_out:
        splits = make_splits(
            len(task.train), args.budget, args.calibration_size, args.seed,
            calibrate_on=args.calibrate_on, eval_size=len(task.eval), task=task.name,
        )
        if "warning" in splits:
            print(f"warning: {splits['warning']}", file=sys.stderr)
        splits.pop("train_ids")
        write_json(args.calibration_out, {"task": task.name, **splits})
    if args.run_record_out:
        if args.run_record is None:
            raise UserError("--run-record-out: give the run's record with --run-record JSON")
        write_json(args.run_record_out, args.run_record)


def cmd_fetch(args: argparse.Namespace) -> None:
    from sweet.io import write_json
    from sweet.plan.hub import fetch_backbone

    fetched = fetch_backbone(args.model, args.hub_cache, args.revision)
    fetched["requested_revision"] = args.revision
    print(f"{args.model}: {args.revision} is commit {fetched['revision']}, in {fetched['snapshot']}", file=sys.stderr)
    if args.out:
        write_json(args.out, fetched)


def cmd_train(args: argparse.Namespace) -> None:
    from sweet.data import load_prepared
    from sweet.plan.hub import resolve_backbone, snapshot_revision
    from sweet.plan.settings import TrainSpec
    from sweet.resume import TrainingInterrupted
    from sweet.train import train, write_training_record

    spec = TrainSpec.from_dict(args.train_spec)
    task = load_prepared(args.task_dir)
    splits = json.loads(Path(args.splits).read_text())
    rows = _select(task.train, splits["train_ids"], args.splits)
    backbone = resolve_backbone(args.backbone, args.hub_cache, args.revision)
    run = json.loads(Path(args.run_record).read_text()) if args.run_record else {}
    work_dir = args.work_dir or Path(args.out).with_name(Path(args.out).name + layout.CHECKPOINTS_SUFFIX)
    try:
        record = train(
            rows, task.num_labels, backbone, args.exit_layers, args.method, args.seed, spec,
            out=args.out, work_dir=work_dir, member=args.member, pooling=args.pooling,
            # checked by train() and recorded in the training record; the workflow gives them in the run record
            method_options=args.method_options or (run.get("identity") or {}).get("method_options"),
        )
    except TrainingInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(TrainingInterrupted.exit_code)
    record = {"task": task.name, "backbone": args.backbone, "backbone_revision": snapshot_revision(backbone), **record}
    if run:  # what the run's folder stands for (sweet.plan.layout): its id, non-default settings and identity
        record = {"run_id": run["run_id"], "settings": run["settings"], "identity": run["identity"], **record}
    write_training_record(record, args.metrics, args.gradient_conflict_out, dict(args.meta or []))


def cmd_combine(args: argparse.Namespace) -> None:
    from sweet.multimodel import MemberModel, write_multimodel_config

    out = Path(args.out)
    depths = []
    for member in args.members:
        path = Path(member)
        if path.parent.resolve() != out.parent.resolve():
            raise UserError(f"--members: {member} must be a folder beside {out} (the MultiModel folder)")
        depths.append(MemberModel.from_pretrained(path).depth)
    write_multimodel_config(out.parent, [Path(m).name for m in args.members], depths, args.method)


def cmd_calibrate(args: argparse.Namespace) -> None:
    import numpy as np

    from sweet.batches import encode, load_tokenizer
    from sweet.calibrate import calibrate_exits
    from sweet.data import load_prepared
    from sweet.evaluate import exit_logits, load_model, logits_record
    from sweet.io import write_json, write_npz

    task = load_prepared(args.task_dir)
    splits = json.loads(Path(args.splits).read_text())
    if "calibration_ids" not in splits:
        raise UserError(f"--splits: {args.splits} holds no calibration split; give the {layout.CALIBRATION_SPLIT} that "
                        "`sweet split --calibration-out` writes")
    on_eval = splits.get("calibrate_on") == "eval"
    pool = task.eval if on_eval else task.train
    rows = _select(pool, splits["calibration_ids"], args.splits)
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.model)
    features = encode(rows, tokenizer)
    logits, lte = exit_logits(model, features, args.batch_size, tokenizer.pad_token_id or 0)
    result = calibrate_exits(logits, np.asarray([r["label"] for r in rows]))
    result["split"] = "eval (reference protocol)" if on_eval else "calibration (unused training pool)"
    if args.logits_out:
        # The very logits the temperatures were fitted on, in logits.npz's format: what held-out operating points
        # and risk control choose thresholds on. `calibrate_on` is kept so a reader can tell a split that is
        # the evaluation set itself (where no held-out guarantee holds).
        record = logits_record(model, rows, features, logits, lte, result["temperatures"])
        record["calibrate_on"] = np.array("eval" if on_eval else "pool")
        write_npz(args.logits_out, record)
    write_json(args.out, result)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from sweet.data import load_prepared
    from sweet.evaluate import evaluate

    task = load_prepared(args.task_dir)
    temperatures = json.loads(Path(args.temperatures).read_text())["temperatures"] if args.temperatures else None
    rows = list(task.eval)
    evaluate(args.model, rows, temperatures, args.out, args.batch_size)


def cmd_curves(args: argparse.Namespace) -> None:
    from sweet.curves import curve_rows, exit_rows, load_logits, with_meta
    from sweet.data import compute_metrics, load_prepared
    from sweet.io import write_csv

    task = load_prepared(args.task_dir)
    logits = load_logits(args.logits)
    meta = dict(args.meta or [])
    curves = curve_rows(logits, task.metrics, task.primary_metric, compute_metrics, args.thresholds, args.dense)
    exits = exit_rows(logits, task.metrics, task.primary_metric, compute_metrics)
    write_csv(args.exits_out, with_meta(exits, meta))
    write_csv(args.out, with_meta(curves, meta))


def cmd_migrate_runs(args: argparse.Namespace) -> None:
    """Move runs of the layout before run ids that this configuration names into their run-id folders."""
    from sweet.plan.config import load_config_file, merge, validate
    from sweet.plan.migrate import candidates, migrate

    config = load_config_file(args.config)
    for overlay in args.configfile or []:
        config = merge(config, load_config_file(overlay))
    models = validate(config)
    found = candidates(config, models, args.gpus, [args.grid] if args.grid else None)
    if not found:
        print("migrate-runs: no run of the layout before run ids is named by this configuration")
        return
    for line in migrate(found, apply=not args.dry_run):
        print(line)


def cmd_operating_points(args: argparse.Namespace) -> None:
    """Held-out operating points and risk-controlled thresholds of one run, from its two splits' stored logits."""
    import pandas as pd

    from sweet.curves import curve_rows, load_logits, with_meta
    from sweet.data import compute_metrics, load_prepared
    from sweet.io import write_csv
    from sweet.operating_points import operating_point_rows
    from sweet.risk import (
        DEFAULT_DELTA,
        DEFAULT_EPSILONS,
        DEFAULT_RISKS,
        RISK_COLUMNS,
        RISKS,
        risk_control_rows,
    )

    task = load_prepared(args.task_dir)
    calibration, evaluation = load_logits(args.calibration_logits), load_logits(args.logits)
    meta = dict(args.meta or [])
    settings = args.risk_control or {}
    # error_offsets is read at aggregation (`python -m sweet aggregate --risk-control`), where a setting's runs meet
    unknown = sorted(set(settings) - {"enabled", "risks", "epsilons", "delta", "error_offsets"})
    if unknown:
        raise UserError(f"--risk-control: unknown key {unknown[0]!r}; known keys: delta, enabled, epsilons, "
                        "error_offsets, risks")
    risks = list(settings.get("risks", DEFAULT_RISKS))
    bad = [r for r in risks if r not in RISKS]
    if bad:
        raise UserError(f"--risk-control: risk {bad[0]!r} unknown; use any of {', '.join(RISKS)}")
    enabled = bool(settings.get("enabled", True))
    if enabled and str(calibration.get("calibrate_on", "pool")) == "eval":
        raise UserError(f"{args.calibration_logits}: the calibration split is the evaluation set (calibrate_on: "
                        "eval), so no risk guarantee holds; recalibrate with calibrate_on: pool, or turn risk "
                        "control off (risk_control.enabled: false)")
    curves = [curve_rows(logits, task.metrics, task.primary_metric, compute_metrics, args.thresholds, args.dense)
              for logits in (calibration, evaluation)]
    points = operating_point_rows(*curves, args.targets)
    if enabled:
        risk = risk_control_rows(calibration, evaluation, task.metrics, task.primary_metric, compute_metrics, risks,
                                 settings.get("epsilons", DEFAULT_EPSILONS), settings.get("delta", DEFAULT_DELTA),
                                 args.thresholds, args.dense)
    else:
        risk = pd.DataFrame(columns=RISK_COLUMNS)  # header only: the file exists either way, so readers need no case
    # exact floats: a threshold read back from these files (by `sweet export`, say) must be the one chosen
    write_csv(args.out, with_meta(points, meta), float_format=None)
    write_csv(args.risk_out, with_meta(risk, meta), float_format=None)


def cmd_audit(args: argparse.Namespace) -> None:
    from sweet.audit import separation_audit
    from sweet.model import EarlyExitModel

    model = EarlyExitModel.from_pretrained(
        args.backbone, num_labels=args.num_labels, exit_layers=args.exit_layers, method=args.method,
        shared_pooler=args.shared_pooler, pooling=args.pooling,
        method_options=methods.resolve_options(args.method, args.method_options, "--method-options"),
    )
    report = separation_audit(model, vocab_size=model.backbone.config.vocab_size)
    if args.out:
        from sweet.io import write_json

        write_json(args.out, report)
    print(f"{args.method} on {args.backbone}, exits {model.exit_layers}, {model.pooling} pooling: "
          f"{report['n_parameters_shared']} parameter tensors receive gradient from more than one exit")
    for name, exits in report["shared"].items():
        print(f"  {name}: exits {exits}")


def cmd_infer(args: argparse.Namespace) -> None:
    """Real early exit on the evaluation split (checks the offline curves; used by the benchmarks)."""
    import numpy as np

    from sweet.batches import encode, load_tokenizer
    from sweet.cost import layer_costs, layer_fraction
    from sweet.data import compute_metrics, load_prepared
    from sweet.evaluate import load_model, method_of
    from sweet.exits import EXIT_RULES
    from sweet.infer import run_early_exit

    task = load_prepared(args.task_dir)
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.model)
    rows = list(task.eval)
    temperatures = np.asarray(json.loads(Path(args.temperatures).read_text())["temperatures"])
    preds, exits = run_early_exit(
        model, encode(rows, tokenizer), EXIT_RULES[args.rule], args.threshold, temperatures,
        args.batch_size, tokenizer.pad_token_id or 0,
    )
    scores = compute_metrics(task.metrics, preds, np.array([r["label"] for r in rows]))
    fraction = layer_fraction(exits, layer_costs(model.exit_layers, method_of(model)), model.exit_layers[-1])
    print(json.dumps({"rule": args.rule, "threshold": args.threshold, **scores, "layer_fraction": fraction,
                      "speedup": 1 / fraction}))


def cmd_latency(args: argparse.Namespace) -> None:
    """Time the run's compiled policies against its compiled full model on this device (sweet/latency.py)."""
    from sweet.latency import run_latency

    table = run_latency(args.run, args.task_dir, args.batch_sizes, args.examples, args.repeats, args.out,
                        {"auto": "auto", "on": True, "off": False}[args.compile], args.model)
    print(table.to_string(index=False))


def cmd_export(args: argparse.Namespace) -> None:
    """A run → a deployable classifier folder (model, temperatures, exit_policy.json, model card)."""
    import shlex

    from sweet.export import ExportPaths, export_run
    from sweet.plan.export_policy import PolicyRequest

    policy = args.policy or ("manual" if args.threshold is not None else None)
    if policy is None:
        raise UserError("--policy: give held-out (with --target-speedup), risk-control (with --risk, --epsilon) or "
                        "manual (with --rule and --threshold)")
    if args.rule is not None and policy != "manual":
        raise UserError(f"--rule: only policy manual takes a rule; policy {policy} picks its row by --strategy")
    request = PolicyRequest(
        policy=policy, strategy=args.rule or args.strategy, target_speedup=args.target_speedup, risk=args.risk,
        epsilon=args.epsilon, delta=args.delta, threshold=args.threshold,
    ).check()
    paths = ExportPaths(run=args.run, model=args.model, logits=args.logits, temperatures=args.temperatures,
                        operating_points=args.operating_points, risk_control=args.risk_control, exits=args.exits)
    task_dir = args.task_dir
    meta = dict(args.meta or [])
    if task_dir is None:
        from sweet.export import run_identity
        from sweet.plan.layout import data_dir

        task_dir = Path(data_dir(str(run_identity(paths, meta)["task"])))
    command = "python -m sweet " + " ".join(shlex.quote(a) for a in args.argv)
    policy_json = export_run(paths, request, task_dir, args.out, meta, args.name, args.grid, command)
    ev = policy_json["evaluation"]
    print(f"{args.out}: {policy_json['rule']} ≥ {policy_json['threshold']:.6g} ({policy_json['chosen_by']['how']}): "
          f"{ev['metric']} {ev['score']:.4f} at {ev['speedup']:.3f}× on the evaluation split", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    """An exported classifier on a CSV/TSV/JSONL file → one row per input with label, probabilities and exit."""
    import pandas as pd

    from sweet.classifier import load_classifier
    from sweet.data import read_records

    compile = {"auto": "auto", "on": True, "off": False}[args.compile]
    classifier = load_classifier(args.folder, compile=compile, precision=args.precision)
    records = [record for _, record in read_records(Path(args.input), "--input")]
    columns = list(dict.fromkeys(c for record in records for c in record))
    text_column = args.text_column or next((c for c in ("text", "sentence") if c in columns), None)
    if text_column is None or text_column not in columns:
        raise UserError(f"--text-column: {args.input} has no column {text_column or 'text or sentence'!r}; "
                        f"name one of {columns}")
    if classifier.has_text_pair and args.text_pair_column is None:
        raise UserError("--text-pair-column: this classifier was trained on text pairs; name the second text's column")
    if args.text_pair_column is not None and args.text_pair_column not in columns:
        raise UserError(f"--text-pair-column: {args.input} has no column {args.text_pair_column!r}; name one of {columns}")
    texts: list = []
    for i, record in enumerate(records, start=1):
        for column in (text_column, args.text_pair_column):
            if column is not None and not isinstance(record.get(column), str):
                raise UserError(f"{args.input}: row {i}: no text in column '{column}'; fill it in or remove the row")
        texts.append(record[text_column] if args.text_pair_column is None
                     else (record[text_column], record[args.text_pair_column]))
    predictions = classifier.predict(texts, batch_size=args.batch_size)
    if classifier.compiled:
        print(f"compiled early exit: warm-up (compiling each input shape once) took "
              f"{classifier.warm_up_seconds:.1f} s", file=sys.stderr)
    frame = pd.DataFrame(records, columns=columns)
    frame["label"] = [p.label for p in predictions]
    frame["label_id"] = [p.label_id for p in predictions]
    frame["exit"] = [p.exit for p in predictions]
    frame["exit_layer"] = [p.exit_layer for p in predictions]
    for j, name in enumerate(classifier.label_names):
        frame[f"prob_{name}"] = [p.probabilities[j] for p in predictions]
    text = frame.to_csv(sep="\t", index=False, float_format="%.6g", lineterminator="\n")
    if args.out:
        from sweet.io import write_text

        write_text(args.out, text)
        print(f"{args.out}: {len(predictions)} predictions", file=sys.stderr)
    else:
        sys.stdout.write(text)


# ----------------------------------------------------------------------------------------------------------------
class _OneLineParser(argparse.ArgumentParser):
    """Command-line mistakes end like every other user error: one line naming the argument, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    # one parser each for lists of speedups (the tables' and the operating points') and for JSON arguments
    from sweet.reporting.cli import _speedups_arg, add_cli, json_arg

    parser = _OneLineParser(prog="python -m sweet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("prepare", help="validate a task's data and write results/data/<task>/")
    p.add_argument("--task", required=True, help="task name (a key of the config's tasks:)")
    p.add_argument("--task-spec", type=json_arg, required=True, help="the task's config mapping as JSON (or @file)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("init-backbone", help="a randomly initialised backbone folder from an inline config")
    p.add_argument("--model-spec", type=json_arg, required=True, help="JSON: model_type, sizes, tokenizer, seed")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_init_backbone)

    p = sub.add_parser("fetch", help="download a hub backbone into the hub cache (on a machine with internet)")
    p.add_argument("--model", required=True, help="hub id, e.g. bert-base-uncased")
    p.add_argument("--hub-cache", required=True, help="Hugging Face hub cache folder (the config's hub_cache)")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default main); recorded as a commit")
    p.add_argument("--out", help="record of what was fetched (JSON)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("split", help="seeded training subset and/or calibration split")
    p.add_argument("--task-dir", required=True)
    p.add_argument("--budget", type=int, required=True, help="training examples")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--calibration-size", type=int, default=1000)
    p.add_argument("--calibrate-on", choices=["pool", "eval"], default="pool",
                   help="pool: unused training examples (default); eval: the reference's protocol (biased)")
    p.add_argument("--out", help=f"the training subset ({layout.SPLITS})")
    p.add_argument("--calibration-out", help=f"the calibration split ({layout.CALIBRATION_SPLIT})")
    p.add_argument("--run-record", type=json_arg, help="the run's identity record (JSON), written to --run-record-out")
    p.add_argument("--run-record-out", help=f"{layout.RUN_JSON} to write")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="fine-tune an early-exit model (EE, SWEET, …) or one MM member")
    p.add_argument("--task-dir", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--backbone", required=True, help="local folder or hub id")
    p.add_argument("--exit-layers", type=_layers_arg, required=True, help="1-based, e.g. 1,4,6,12")
    p.add_argument("--method", choices=methods.names(), required=True, help="a method of sweet.methods")
    p.add_argument("--method-options", type=json_arg, default={},
                   help="the method's options as JSON, e.g. '{\"separation\": 0.25}' (default: the --run-record's, "
                   "else the method's defaults)")
    p.add_argument("--member", type=int, help="a per-exit method (MM): which member (1-based) to train")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--pooling", choices=POOLINGS, help=POOLING_HELP)
    p.add_argument("--train-spec", type=json_arg, default={}, help="training options as JSON (see TrainSpec)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--metrics", required=True, help="training record (JSON) to write")
    p.add_argument("--gradient-conflict-out", help="CSV of the gradient-conflict probe (EE with the probe on)")
    p.add_argument("--meta", type=_meta_arg, nargs="*", help="identity columns for the probe's CSV, e.g. task=sst2")
    p.add_argument("--work-dir", help="checkpoints for resuming (default: <out>.checkpoints)")
    p.add_argument("--hub-cache", help="hub cache a hub id is read from (default: Hugging Face's own)")
    p.add_argument("--revision", default="main", help="the hub backbone's branch, tag or commit (default main)")
    p.add_argument("--run-record", help=f"the run's {layout.RUN_JSON}: its id and settings go into the training record")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("combine", help="MM: declare trained members as one MultiModel folder")
    p.add_argument("--members", nargs="+", required=True)
    p.add_argument("--method", choices=methods.names("per-exit"),
                   help="the per-exit method the members were trained with (recorded in sweet_config.json)")
    p.add_argument("--out", required=True, help=f"<run>/{layout.SWEET_CONFIG}")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("calibrate", help="per-exit temperature scaling on the calibration split")
    p.add_argument("--model", required=True)
    p.add_argument("--task-dir", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help=layout.TEMPERATURES)
    p.add_argument("--logits-out", help=f"{layout.CALIBRATION_LOGITS}: the calibration split's per-exit logits, in "
                   f"{layout.LOGITS}'s format (with the fitted temperatures)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("evaluate", help="per-exit logits of the evaluation split, in one batched pass")
    p.add_argument("--model", required=True)
    p.add_argument("--task-dir", required=True)
    p.add_argument("--temperatures", help=f"{layout.TEMPERATURES} from `calibrate` (default: T = 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help=layout.LOGITS)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("curves", help="speed–accuracy curves for every exit rule, and each exit's score")
    p.add_argument("--logits", required=True)
    p.add_argument("--task-dir", required=True)
    p.add_argument("--meta", type=_meta_arg, nargs="*", help="identity columns, e.g. task=sst2 seed=1")
    p.add_argument("--thresholds", type=int, default=11, help="points of the reference grid")
    p.add_argument("--dense", type=int, default=101, help="points of the dense grid")
    p.add_argument("--out", required=True, help=layout.CURVES)
    p.add_argument("--exits-out", required=True, help=layout.EXITS)
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("migrate-runs", help="move runs of the layout before run ids into their run-id folders")
    p.add_argument("--config", default="config.yaml", help="the base configuration (default config.yaml)")
    p.add_argument("--configfile", action="append", help="an overlay, as given to snakemake (repeatable)")
    p.add_argument("--grid", help="only this grid's runs (default: every grid of the configuration)")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs the runs trained with (only matters for bf16/fp16 training; default 0)")
    p.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    p.set_defaults(func=cmd_migrate_runs)

    p = sub.add_parser("operating-points", help="held-out operating points and risk-controlled thresholds "
                       "(chosen on the calibration split's logits, applied to the evaluation split's)")
    p.add_argument("--calibration-logits", required=True, help=f"{layout.CALIBRATION_LOGITS} (from `calibrate`)")
    p.add_argument("--logits", required=True, help=f"{layout.LOGITS} (from `evaluate`)")
    p.add_argument("--task-dir", required=True)
    p.add_argument("--meta", type=_meta_arg, nargs="*", help="identity columns, e.g. task=sst2 seed=1")
    p.add_argument("--thresholds", type=int, default=11, help="points of the reference grid (as `curves`)")
    p.add_argument("--dense", type=int, default=101, help="points of the dense grid (as `curves`)")
    p.add_argument("--targets", type=_speedups_arg, default=[1.5, 2.0, 3.0],
                   help="target speedups of the held-out operating points (default 1.5,2,3)")
    p.add_argument("--risk-control", type=json_arg, default={},
                   help="JSON: enabled, risks (disagreement, accuracy-drop, error), epsilons, delta (config "
                        "risk_control:; error_offsets is for `aggregate`)")
    p.add_argument("--out", required=True, help=layout.OPERATING_POINTS)
    p.add_argument("--risk-out", required=True, help=layout.RISK_CONTROL)
    p.set_defaults(func=cmd_operating_points)

    p = sub.add_parser("audit", help="list parameters that receive gradient from more than one exit")
    p.add_argument("--backbone", required=True)
    p.add_argument("--exit-layers", type=_layers_arg, required=True)
    p.add_argument("--method", choices=methods.names("joint"), required=True)
    p.add_argument("--method-options", type=json_arg, default={}, help="the method's options as JSON")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--shared-pooler", action="store_true")
    p.add_argument("--pooling", choices=POOLINGS, help=POOLING_HELP)
    p.add_argument("--out", help="write the report as JSON")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("infer", help="real early-exit inference on the evaluation split")
    p.add_argument("--model", required=True)
    p.add_argument("--task-dir", required=True)
    p.add_argument("--temperatures", required=True)
    p.add_argument("--rule", default="confidence", choices=list(EXIT_RULES))
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("latency", help="measured ms per example and speedup of the run's operating points "
                       "against its full model, on this device")
    p.add_argument("--run", required=True, help="the run's calibrated folder (temperatures.json, operating_points.csv, "
                   "risk_control.csv)")
    p.add_argument("--task-dir", required=True)
    p.add_argument("--model", help="the trained model folder (default: model/ of the run's training folder)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--examples", type=int, default=256, help="the first N evaluation examples are timed")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per policy and batch size (median)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="auto: compiled on CUDA (CUDA graphs), plain segments on a CPU; on: inductor on a CPU too")
    p.add_argument("--out", help="default: latency.csv in --run (sweet.plan.layout.LATENCY)")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("export", help="a run → a deployable classifier folder: model, temperatures, exit policy, card")
    p.add_argument("--run", required=True,
                   help="the run's calibrated folder (results/runs/<task>/<model>/b<budget>/<method>-<id>/s<seed>/cal-…)")
    p.add_argument("--out", required=True, help="folder to write (e.g. results/<grid>/classifiers/<name>)")
    p.add_argument("--policy", choices=POLICIES,
                   help="how the threshold is chosen (default: manual when --threshold is given)")
    p.add_argument("--strategy", default="confidence", choices=list(EXIT_RULES),
                   help="held-out / risk-control: the exit rule whose row is taken")
    p.add_argument("--target-speedup", type=float, help=f"held-out: a target_speedup of {layout.OPERATING_POINTS}")
    p.add_argument("--risk", choices=RISKS, help="risk-control: the controlled risk")
    p.add_argument("--epsilon", type=float, help="risk-control: the risk bound ε")
    p.add_argument("--delta", type=float, help="risk-control: the failure probability δ (optional when unique)")
    p.add_argument("--rule", choices=list(EXIT_RULES), help="manual: the exit rule")
    p.add_argument("--threshold", type=float, help="manual: the threshold")
    p.add_argument("--task-dir", help="the prepared task (default: results/data/<the run's task>)")
    p.add_argument("--model", help="trained model folder (default: <run>/model)")
    p.add_argument("--logits", help=f"the run's {layout.LOGITS} (default: <run>/{layout.LOGITS})")
    p.add_argument("--temperatures", help=f"the run's {layout.TEMPERATURES} (default: <run>/{layout.TEMPERATURES})")
    p.add_argument("--operating-points", help=f"{layout.OPERATING_POINTS} (default: <run>/{layout.OPERATING_POINTS})")
    p.add_argument("--risk-control", help=f"{layout.RISK_CONTROL} (default: <run>/{layout.RISK_CONTROL})")
    p.add_argument("--exits", help=f"{layout.EXITS}, read for the run's identity (default: in <run>)")
    p.add_argument("--meta", type=_meta_arg, nargs="*", help="the run's identity, e.g. task=sst2 budget=6000")
    p.add_argument("--name", help="the classifier's name (default: the output folder's)")
    p.add_argument("--grid", help="the grid the run belongs to (for the model card)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="an exported classifier on a CSV/TSV/JSONL file of texts")
    p.add_argument("folder", help="a folder written by `export`")
    p.add_argument("--input", required=True, help="texts to classify (.tsv, .csv or .jsonl)")
    p.add_argument("--text-column", help="column of the text (default: text, else sentence)")
    p.add_argument("--text-pair-column", help="column of the second text (sentence-pair tasks)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="compiled exit segments (sweet.compiled); auto: on for CUDA, off otherwise")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="inference precision; bf16 and fp16 need a GPU")
    p.add_argument("--out", help="predictions TSV to write (default: stdout)")
    p.set_defaults(func=cmd_predict)


    add_cli(sub)
    return parser


def _select(rows: Any, ids: list[int], source: str) -> list[dict]:
    by_id = {r["id"]: r for r in rows}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(f"{source}: ids {missing[:5]} are not in the prepared data; rerun `split` for this task")
    return [by_id[i] for i in ids]


def _quiet_libraries() -> None:
    # Environment variables rather than transformers' logging API: the table and figure commands never import
    # transformers (or torch), and these are read when (if) it is imported.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed (export records it)
    _quiet_libraries()
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as err:
        print(f"error: {err.filename}: no such file; check the path (or run the stage that writes it)", file=sys.stderr)
        sys.exit(2)
