"""`python -m sweet aggregate | figures | report`: a grid's tables, figures and report (the workflow's reporting
rules call these; they also work on any run folders by hand)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from sweet.errors import UserError
from sweet.plan.config import RESULTS
from sweet.plan.status import grid_spec_runs
from sweet.reporting.claims import OPERATING_POINT_MODES, ClaimSettings
from sweet.reporting.collect import CommonTargetSettings, discover_runs
from sweet.reporting.statistics import DEFAULT_SPEEDUPS, METHOD_TARGETS
from sweet.reporting.tables import (
    CLAIMS_CSV,
    CURVES,
    METHODS_CSV,
    RISK_CONTROL_COMMON,
    SPEEDUP_SUMMARY,
    STATUS,
)


def json_arg(value: str) -> dict:
    """A JSON object given inline or as @path."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return parsed


def _speedups_arg(value: str) -> list[float]:
    try:
        speedups = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of numbers") from None
    if not speedups or any(s <= 0 for s in speedups):
        raise argparse.ArgumentTypeError("give positive numbers, e.g. 1.5,2,3,4")
    return speedups


def _claim_settings(values: dict) -> ClaimSettings:
    known = {f.name for f in dataclasses.fields(ClaimSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"--claims: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    settings = ClaimSettings.from_dict(values)
    for name in ("fast_speedup", "slow_speedup", "margin", "level"):
        if not isinstance(getattr(settings, name), int | float) or getattr(settings, name) <= 0:
            raise UserError(f"--claims: {name} must be a positive number, got {getattr(settings, name)!r}")
    if settings.operating_points not in OPERATING_POINT_MODES:
        raise UserError(f"--claims: operating_points must be one of {', '.join(OPERATING_POINT_MODES)}, got "
                        f"{settings.operating_points!r}")
    if not settings.level < 1:
        raise UserError(f"--claims: level must lie between 0 and 1, got {settings.level}")
    return settings


def _common_target_settings(values: dict, thresholds: int, dense: int) -> CommonTargetSettings | None:
    """The config's risk_control block → the common error target's settings (None: risk control is off)."""
    from sweet.risk import DEFAULT_DELTA, DEFAULT_ERROR_OFFSETS

    known = ("delta", "enabled", "epsilons", "error_offsets", "risks")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"--risk-control: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    if not values.get("enabled", True):
        return None
    offsets = values.get("error_offsets", list(DEFAULT_ERROR_OFFSETS))
    if not isinstance(offsets, list) or not all(isinstance(o, int | float) and 0 <= o < 1 for o in offsets):
        raise UserError(f"--risk-control: error_offsets must be a list of numbers in [0, 1) (points of accuracy "
                        f"below the best last exit, e.g. [0.01, 0.02, 0.05]), got {offsets!r}")
    delta = values.get("delta", DEFAULT_DELTA)
    if not isinstance(delta, int | float) or not 0 < delta < 1:
        raise UserError(f"--risk-control: delta must lie strictly between 0 and 1, got {delta!r}")
    return CommonTargetSettings(tuple(float(o) for o in offsets), float(delta), thresholds, dense)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from sweet.reporting.tables import aggregate

    grid = args.grid_spec or {}
    runs: list[Path] = [Path(r) for r in args.runs]
    if grid:
        missing = [k for k in ("name", "tasks", "models", "budgets", "methods", "seeds") if k not in grid]
        if missing:
            raise UserError(f"--grid-spec: missing key {missing[0]!r}; pass what sweet.plan.layout.grid_spec returns")
        if "runs" not in grid:
            raise UserError("--grid-spec: no 'runs' list; pass what sweet.plan.layout.grid_spec returns")
        runs += [Path(args.results) / Path(r).relative_to(RESULTS) if args.results != RESULTS else Path(r)
                 for r, _ in grid_spec_runs(grid)]
    if args.runs_file:
        path = Path(args.runs_file)
        if not path.is_file():
            raise UserError(f"--runs-file: {path} does not exist; give a file with one run folder per line")
        runs += [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    if args.runs_root:
        runs += discover_runs(args.runs_root)
    if not runs:
        raise UserError("aggregate: no runs given; pass --grid-spec JSON, --runs RUN_DIR..., --runs-file FILE or "
                        "--runs-root DIR")
    written = aggregate(runs, args.out, grid, args.speedups, _claim_settings(args.claims or {}), args.logs,
                        args.targets, _common_target_settings(args.risk_control or {}, args.thresholds, args.dense))
    print(f"aggregate: {written[STATUS].read_text().strip()}")


def cmd_figures(args: argparse.Namespace) -> None:
    from sweet.reporting.figures import make_figures

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"--formats: {args.formats!r}; use a comma-separated subset of png,pdf,svg")
    if not (Path(args.tables) / CURVES).is_file():
        raise UserError(f"--tables: {args.tables} holds no {CURVES}; run `python -m sweet aggregate` first")
    make_figures(args.tables, args.out, strategy=args.strategy, formats=formats)


def cmd_report(args: argparse.Namespace) -> None:
    from sweet.reporting.report import make_report

    for flag, folder, needed in (("--tables", args.tables, CLAIMS_CSV), ("--figures", args.figures, "index.json")):
        if not (Path(folder) / needed).is_file():
            raise UserError(f"{flag}: {folder} holds no {needed}; run `python -m sweet "
                            f"{'aggregate' if flag == '--tables' else 'figures'}` first")
    make_report(args.tables, args.figures, args.out)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``aggregate``, ``figures`` and ``report`` subcommands on the CLI's subparsers."""
    p = subparsers.add_parser("aggregate", help="a grid's tables and claims from per-run CSVs (results/<grid>/tables/)")
    p.add_argument("--grid-spec", type=json_arg,
                   help="the grid (JSON or @file, as sweet.plan.layout.grid_spec writes it): its runs are aggregated, "
                        "and runs without results are listed with the reason")
    p.add_argument("--results", default=RESULTS, help=f"where the grid's runs/ and logs/ are (default {RESULTS})")
    p.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR",
                   help="calibrated run folders (results/runs/<task>/<model>/b<budget>/<method>-<run id>/s<seed>/cal-…)")
    p.add_argument("--runs-file", help="a file listing run folders, one per line")
    p.add_argument("--runs-root", help="also take every run folder found under this folder")
    p.add_argument("--logs", help="the steps' logs (default: logs/ beside the runs' runs/ folder)")
    p.add_argument("--out", required=True, help="output folder, e.g. results/demo/tables (replaced as a whole)")
    p.add_argument("--speedups", type=_speedups_arg, default=list(DEFAULT_SPEEDUPS),
                   help=f"fixed speedups for {SPEEDUP_SUMMARY} (default 1.5,2,3,4)")
    p.add_argument("--targets", type=_speedups_arg, default=list(METHOD_TARGETS),
                   help=f"fixed speedups for {METHODS_CSV}, every method against EE (default 1.5,2,3: the config's "
                        "operating_points.targets, which the workflow passes)")
    p.add_argument("--claims", type=json_arg,
                   help="how claims are checked (JSON): exit_rule, fast_speedup, slow_speedup, margin, level, "
                        "operating_points (envelope | held-out)")
    p.add_argument("--risk-control", type=json_arg,
                   help="the config's risk_control block (JSON): error_offsets and delta set the common error "
                        f"target every method of a setting is held to ({RISK_CONTROL_COMMON}); enabled: false "
                        "leaves that table empty")
    p.add_argument("--thresholds", type=int, default=11,
                   help="the exit rules' threshold grid, as the runs' curves use it (config thresholds)")
    p.add_argument("--dense", type=int, default=101, help="the dense threshold grid (config dense_thresholds)")
    p.set_defaults(func=cmd_aggregate)

    p = subparsers.add_parser("figures", help="speed-accuracy, individual-exit and gradient-conflict figures")
    p.add_argument("--tables", required=True, help="the folder `aggregate` wrote, e.g. results/demo/tables")
    p.add_argument("--out", required=True, help="output folder, e.g. results/demo/figures (replaced as a whole)")
    p.add_argument("--strategy", default="confidence",
                   help="exit rule of the main speed-accuracy figures (default confidence; all rules also "
                        "appear in the *__allrules figures)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated file formats (default png,pdf)")
    p.set_defaults(func=cmd_figures)

    p = subparsers.add_parser("report", help="one HTML file: the grid, what ran, the claims, figures and tables")
    p.add_argument("--tables", required=True, help="the folder `aggregate` wrote, e.g. results/demo/tables")
    p.add_argument("--figures", required=True, help="the folder `figures` wrote, e.g. results/demo/figures")
    p.add_argument("--out", required=True, help="the HTML file, e.g. results/demo/report.html")
    p.set_defaults(func=cmd_report)
