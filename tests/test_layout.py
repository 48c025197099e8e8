"""The run-folder owner (sweet.plan.layout): what it writes a run's paths as, it reads back, in either layout and
wherever the results folder is; the rules' log patterns and the status reader's log paths are the same paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweet.plan.layout import (
    BENCHMARKS,
    LOGS,
    Run,
    below_runs,
    benchmark_pattern,
    data_dir,
    legacy_dir_of,
    log_pattern,
    logs_root_of,
    method_folder,
    run_fields,
    run_file,
    step_log,
    training_dir,
)

RUN = Run(task="runs", model="org/m", model_slug="org--m", budget=100, method="sweet", seed=2, run_id="0123abcd",
          calibration="cal-pool50", identity={})  # a task named like the runs/ folder itself


@pytest.mark.parametrize("base", ["", "/tmp/x/runs/copy"])  # relative, and below another folder called runs
def test_a_run_folder_reads_back_as_the_run_it_was_written_for(base: str) -> None:
    calibrated = Path(base, RUN.calibrated_dir)
    fields = run_fields(calibrated)
    assert fields == {"task": "runs", "model": "org--m", "budget": 100, "method": "sweet", "seed": 2,
                      "run_id": "0123abcd", "calibration": "cal-pool50"}
    assert run_fields(training_dir(calibrated)) == {**fields, "calibration": ""}
    assert training_dir(calibrated) == Path(base, RUN.dir)
    assert method_folder(calibrated) == "sweet"
    assert below_runs(calibrated) == Path("runs/org--m/b100/sweet-0123abcd/s2/cal-pool50")
    assert logs_root_of(calibrated) == Path(base, LOGS)
    assert legacy_dir_of(calibrated) == Path(base, RUN.legacy_dir)
    assert run_fields(Path(base, RUN.legacy_dir)) == {**fields, "run_id": "", "calibration": ""}


def test_the_rules_log_where_the_status_reader_looks() -> None:
    wildcards = {**RUN.wildcards(), "k": 3}
    logs = Path(LOGS)
    assert Path(log_pattern("train").format(**wildcards)) == step_log(logs, "train", RUN.calibrated_dir, False)
    assert Path(log_pattern("train").format(**wildcards)) == step_log(logs, "train", RUN.dir, False)
    assert Path(log_pattern("evaluate", calibrated=True).format(**wildcards)) == \
        step_log(logs, "evaluate", RUN.calibrated_dir, True)
    assert Path(log_pattern("train_member", member=True).format(**wildcards)) == \
        step_log(logs, "train_member", RUN.dir, False, member=3)
    assert benchmark_pattern("train").format(**wildcards) == \
        f"{BENCHMARKS}/train/runs/org--m/b100/sweet-0123abcd/s2.tsv"
    assert data_dir("sst2") == "results/data/sst2"


def test_a_run_file_is_looked_up_in_the_calibrated_folder_then_the_training_folder(tmp_path: Path) -> None:
    calibrated = tmp_path / RUN.calibrated_dir
    calibrated.mkdir(parents=True)
    (calibrated.parent / "train_metrics.json").write_text("{}")
    (calibrated / "curves.csv").write_text("")
    assert run_file(calibrated, "curves.csv") == calibrated / "curves.csv"
    assert run_file(calibrated, "train_metrics.json") == calibrated.parent / "train_metrics.json"


def test_folders_outside_the_layout() -> None:
    assert below_runs("/tmp/hand-made/run") is None and logs_root_of("/tmp/hand-made/run") is None
    assert run_fields("/tmp/hand-made/run") is None
    assert legacy_dir_of("/tmp/hand-made/run") is None  # not a calibrated folder


def test_run_file_names_are_the_ones_finished_runs_hold():
    """The names of a run's files are spelled once, in the layout; renaming one would orphan every finished run."""
    from sweet.plan import layout

    assert {name: getattr(layout, name) for name in (
        "RUN_JSON", "SPLITS", "MODEL", "MEMBER_MODEL", "SWEET_CONFIG", "TRAIN_METRICS", "MEMBERS", "MEMBER_METRICS",
        "GRADIENT_CONFLICT", "CALIBRATION_SPLIT", "TEMPERATURES", "CALIBRATION_LOGITS", "LOGITS", "CURVES", "EXITS",
        "OPERATING_POINTS", "RISK_CONTROL")} == {
        "RUN_JSON": "run.json", "SPLITS": "splits.json", "MODEL": "model", "MEMBER_MODEL": "model/member_{k}",
        "SWEET_CONFIG": "model/sweet_config.json", "TRAIN_METRICS": "train_metrics.json", "MEMBERS": "members",
        "MEMBER_METRICS": "members/member_{k}.json", "GRADIENT_CONFLICT": "gradient_conflict.csv",
        "CALIBRATION_SPLIT": "calibration.json", "TEMPERATURES": "temperatures.json",
        "CALIBRATION_LOGITS": "calibration_logits.npz", "LOGITS": "logits.npz", "CURVES": "curves.csv",
        "EXITS": "individual_exits.csv", "OPERATING_POINTS": "operating_points.csv", "RISK_CONTROL": "risk_control.csv"}
    assert run_file(f"{RUN.calibrated_dir}", layout.SPLITS) == Path(RUN.dir) / "splits.json"
