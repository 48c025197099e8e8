# Which classifiers a grid exports (`grids.<grid>.exports`) and what each export reads; the rules are in
# rules/export.smk (why an export keeps its run's model until exported, and what is refused, is said there).

from sweet.plan.export_policy import existing_request, export_request_json


def grid_exports(grid):
    return config["grids"][grid].get("exports") or {}


def export_dirs(grid):
    return [f"results/{grid}/classifiers/{name}" for name in grid_exports(grid)]


class RunWildcards(dict):
    """The wildcards of an export's run (task, model slug, budget, method, run id, seed, calibration), for the
    per-run helpers."""

    __getattr__ = dict.__getitem__


def export_entry(wildcards):
    return grid_exports(wildcards.grid)[wildcards.name]


def export_run(wildcards):
    """The grid's run an export names (its run id is the grid's settings')."""
    entry = export_entry(wildcards)
    wanted = (entry["task"], entry["model"], int(entry["budget"]), entry["method"], int(entry["seed"]))
    for run in run_dirs():
        if (run.task, run.model, run.budget, run.method, run.seed) == wanted:
            return run
    print(f"error: grids.{wildcards.grid}.exports.{wildcards.name}: names no run of grid '{config['grid']}'; "
          "run the grid it belongs to (--config grid=NAME)", file=sys.stderr)
    sys.exit(1)


def export_run_wildcards(wildcards):
    return RunWildcards({k: str(v) for k, v in export_run(wildcards).wildcards().items()})


def export_run_dir(wildcards):
    """The run's calibrated folder: its logits, temperatures and policy tables."""
    return export_run(wildcards).calibrated_dir


POLICY_TABLES = {"held-out": ("operating_points", layout.OPERATING_POINTS),
                 "risk-control": ("risk_control", layout.RISK_CONTROL)}


def export_inputs(wildcards):
    """The run's model, logits, temperatures and task, and the policy's table; refuses an export that would
    retrain a finished run whose model is gone."""
    entry = export_entry(wildcards)
    run_wildcards = export_run_wildcards(wildcards)
    run = export_run(wildcards).calibrated_dir
    model = model_inputs(run_wildcards)
    folder = f"results/{wildcards.grid}/classifiers/{wildcards.name}"
    if (not Path(model[0]).exists() and Path(f"{run}/{layout.LOGITS}").is_file()
            and existing_request(folder) != export_request_json(entry)):
        print(f"error: grids.{wildcards.grid}.exports.{wildcards.name}: run {run} finished and its trained model was "
              "deleted (keep_checkpoints: false), so exporting it would retrain it; list exports before their runs "
              "train (the workflow then keeps each model until it is exported), or delete the run folder to retrain "
              "it on purpose", file=sys.stderr)
        sys.exit(1)
    inputs = {"model": model, "logits": f"{run}/{layout.LOGITS}", "temperatures": f"{run}/{layout.TEMPERATURES}",
              "task_dir": task_dir(run_wildcards)}
    if entry["policy"] in POLICY_TABLES:
        key, name = POLICY_TABLES[entry["policy"]]
        inputs[key] = f"{run}/{name}"
    return inputs


def export_policy_args(wildcards, input):
    """`--policy …` and its fields (validated names and numbers), and the path of the policy's table."""
    entry = export_entry(wildcards)
    args = [f"--policy {entry['policy']}"]
    args += [f"--{key.replace('_', '-')} {entry[key]}" for key in
             ("strategy", "target_speedup", "risk", "epsilon", "delta", "rule", "threshold") if key in entry]
    if entry["policy"] in POLICY_TABLES:
        key, _ = POLICY_TABLES[entry["policy"]]
        args.append(f"--{key.replace('_', '-')} {input[key]}")
    return " ".join(args)
