# Which grid each target makes, and whether its tables come from every run (build) or from those that finished
# (draw). Runs live in results/runs/ and are shared by every grid that names them; a grid's tables, figures and
# report live in results/<grid>/ and never touch another grid's.
#   build  `snakemake` (and `tables`/`figures`/`report` for a named grid): every run of the grid is an input, so
#          missing runs are trained first, and the tables appear once all of them have finished.
#   draw   `partial=true`, or `tables`/`figures`/`report` with no grid named: the tables come from the runs that
#          have finished and no run is an input, so nothing is ever trained; runs.csv, missing_runs.txt and
#          status.txt say which runs are missing and why. A fingerprint of the finished runs is a param, so the
#          tables are redrawn when more runs finish, and stop being marked partial once all have.

import re

from sweet.plan.layout import grid_spec
from sweet.plan.status import last_finished_grid, runs_fingerprint

PARTIAL = bool(config.get("partial", False))
RUN_GRID = config["grid"]  # what `snakemake` runs: the grid named, or config.yaml's default
DRAWN_GRID = RUN_GRID  # what `snakemake tables | figures | report` draw
GRID_NAMES = "|".join(re.escape(name) for name in config["grids"])

if not GRID_NAMED and workflow.is_main_process:
    _last = last_finished_grid(config, MODELS, JOB_GPUS)
    if _last is not None:
        DRAWN_GRID = _last[0]
    if _last is None:
        _why = "config.yaml's grid:; no run has finished yet"
    elif DRAWN_GRID == RUN_GRID:
        _why = "config.yaml's grid:, and the grid whose runs finished last"
    else:
        _why = None
    if _why:
        print(f"sweet: grid '{RUN_GRID}' ({_why}); pick another with --config grid=NAME", file=sys.stderr)
    else:
        print(f"sweet: `snakemake tables | figures | report` draw grid '{DRAWN_GRID}' (its runs finished last: "
              f"{_last[1]} of {_last[2]}) from its finished runs, training nothing; `snakemake` runs grid "
              f"'{RUN_GRID}' (config.yaml's grid:). Pick a grid with --config grid=NAME", file=sys.stderr)


def draws_finished_runs(grid):
    """Draw mode: the grid's tables come from the runs that finished, and no run is started."""
    return PARTIAL or grid != RUN_GRID


def table_inputs(wildcards):
    """Build mode: every run's files (so missing runs are made first); draw mode: none."""
    if draws_finished_runs(wildcards.grid):
        return []
    return [*run_files(layout.CURVES), *run_files(layout.EXITS),
            *run_files(layout.GRADIENT_CONFLICT, methods=method_registry.names("joint"), calibrated=False),
            *operating_point_files(), *latency_files()]


def operating_point_files():
    """Every run's held-out operating points and risk control, except runs evaluated before calibration logits
    were kept (moved by `sweet migrate-runs`): they have none, and making them would need the trained model again."""
    files = []
    for run in run_dirs():
        folder = Path(run.calibrated_dir)
        if (folder / layout.CURVES).is_file() and not (folder / layout.CALIBRATION_LOGITS).is_file():
            continue
        files += [f"{folder}/{layout.OPERATING_POINTS}", f"{folder}/{layout.RISK_CONTROL}"]
    return files


def finished_runs(wildcards):
    """Draw mode: which runs have finished (and when), and why the others have not; changes redraw the tables."""
    if draws_finished_runs(wildcards.grid):
        return runs_fingerprint([(r.calibrated_dir, r.run_id) for r in grid_runs(config, wildcards.grid, MODELS,
                                                                                 gpus=JOB_GPUS)])
    return "all"


def grid_spec_json(wildcards):
    """The grid as the tables and the report record it."""
    return json.dumps(grid_spec(config, wildcards.grid, MODELS, gpus=JOB_GPUS), sort_keys=True)
