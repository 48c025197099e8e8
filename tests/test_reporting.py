"""Reporting end to end on small synthetic run folders: where each run stands and why, a partial grid with one
failed run, the report's first page, the grid whose runs finished last, and the package's layering."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from test_figures import write_fake_grid, write_fake_run

from sweet.plan.config import load_config_file, merge, validate
from sweet.plan.layout import grid_runs as layout_grid_runs
from sweet.plan.status import grid_spec_runs, last_finished_grid, run_status, runs_fingerprint
from sweet.reporting.figures import make_figures
from sweet.reporting.report import make_report
from sweet.reporting.tables import aggregate

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["collect", "statistics", "claims", "tables", "figures", "report", "cli"]
TRAINED = "synthetic/tiny-bert/b100/{method}-0000000{seed}/s{seed}"  # a run folder below results/runs/
RUN = TRAINED + "/cal-pool1000"  # its calibrated folder, which the reporting reads


def spec(name: str = "g", methods=("ee", "sweet", "mm"), seeds=(1, 2), root: str = "results") -> dict:
    runs = [{"dir": f"{root}/runs/{TRAINED.format(method=m, seed=s)}",
             "calibrated_dir": f"{root}/runs/{RUN.format(method=m, seed=s)}", "run_id": f"0000000{s}", "settings": ""}
            for m in methods for s in seeds]
    return {"name": name, "tasks": ["synthetic"], "models": ["tiny-bert"], "budgets": [100], "methods": list(methods),
            "seeds": list(seeds), "exit_layers": {"tiny-bert": [1, 4, 6, 12]},
            "training": {"tiny-bert": {"learning_rate": 0.001, "epochs": 8}}, "calibrate_on": "pool",
            "calibration_size": 1000, "runs": runs}


def write_log(results: Path, step: str, run: str, text: str, member: int | None = None) -> Path:
    path = results / "logs" / step / (f"{run}/member_{member}.log" if member else f"{run}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ layering
def test_reporting_modules_import_only_earlier_stages() -> None:
    """collect → statistics → claims → tables → figures → report → cli, and nothing imports back up the flow."""
    for position, name in enumerate(LAYERS):
        tree = ast.parse((ROOT / "sweet" / "reporting" / f"{name}.py").read_text())
        imported = {node.module.split(".")[2] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweet.reporting.")}
        later = imported - set(LAYERS[:position])
        assert not later, f"sweet/reporting/{name}.py imports {sorted(later)}, which come later in the flow"
    # the run status the Snakefile reads while planning is sweet.plan.status: tests/test_plan_boundary.py
    assert not (ROOT / "sweet" / "aggregate.py").exists() and not (ROOT / "sweet" / "plots.py").exists()


# ------------------------------------------------------------------------------------------------ run status
def test_where_a_run_stands_and_why(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = lambda method, seed: results / "runs" / RUN.format(method=method, seed=seed)  # noqa: E731
    trained = lambda method, seed: TRAINED.format(method=method, seed=seed)  # noqa: E731
    write_fake_run(run("ee", 1), "synthetic", "tiny-bert", 100, "ee", 1)
    assert run_status(run("ee", 1)).status == "finished"
    assert run_status(run("ee", 2)).status == "never started"

    # a user error in training: the `error:` line is the reason
    run("sweet", 1).parent.mkdir(parents=True)
    (run("sweet", 1).parent / "splits.json").write_text("{}")
    write_log(results, "split", trained("sweet", 1), "wrote splits\n")
    log = write_log(results, "train", trained("sweet", 1), "step 1\nerror: --train-spec: bad lr\n")
    status = run_status(run("sweet", 1))
    assert (status.status, status.step, status.detail) == ("failed", "train", "error: --train-spec: bad lr")
    assert status.log == log.as_posix()
    assert status.describe().endswith(f"failed at train: error: --train-spec: bad lr (read {log.as_posix()})")

    # a crash in an MM member: the traceback's last line, and which member
    write_log(results, "train_member", trained("mm", 1), "ok\n", member=1)
    write_log(results, "train_member", trained("mm", 1),
              "Traceback (most recent call last):\n  File \"x\"\ntorch.OutOfMemoryError: CUDA out of memory\n", member=2)
    status = run_status(run("mm", 1))
    assert (status.status, status.step) == ("failed", "train (MM member 2)")
    assert status.detail == "torch.OutOfMemoryError: CUDA out of memory"

    # killed (or still running) after training: stopped at calibration, no error in any log
    run("ee", 3).mkdir(parents=True)
    for name in ("splits.json", "train_metrics.json"):
        (run("ee", 3).parent / name).write_text("{}")
    (run("ee", 3) / "calibration.json").write_text("{}")
    log = write_log(results, "calibrate", RUN.format(method="ee", seed=3), "calibrating\n")
    status = run_status(run("ee", 3))
    assert (status.status, status.step, status.log) == ("not finished", "calibrate", log.as_posix())
    assert "still running, or killed" in status.describe()

    # a folder whose run.json records another run id holds other settings' results: never this grid's
    (run("ee", 1).parent / "run.json").write_text(json.dumps({"run_id": "ffffffff", "identity": {"x": 1}}))
    status = run_status(run("ee", 1), expected_id="00000001")
    assert status.status == "other settings" and "'ffffffff', not 00000001" in status.describe()
    assert run_status(run("ee", 1)).status == "finished"  # without a grid's expectation: what the folder holds


# ------------------------------------------------------------------------------------------------ partial grid
@pytest.fixture(scope="module")
def partial_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grid of 6 runs: 5 finished, SWEET seed 2 failed in training."""
    results = tmp_path_factory.mktemp("partial") / "results"
    grid = spec(root=results.as_posix())
    runs = [path for path, _ in grid_spec_runs(grid)]
    for path in runs:
        method, seed = path.split("/")[-3].split("-")[0], int(path.split("/")[-2][1:])
        if (method, seed) != ("sweet", 2):
            write_fake_run(Path(path), "synthetic", "tiny-bert", 100, method, seed)
    (results / "runs" / TRAINED.format(method="sweet", seed=2)).mkdir(parents=True)
    write_log(results, "train", TRAINED.format(method="sweet", seed=2),
              "Traceback (most recent call last):\nValueError: loss is nan\n")
    aggregate(runs, results / "g" / "tables", grid)
    make_figures(results / "g" / "tables", results / "g" / "figures", formats=("png",))
    make_report(results / "g" / "tables", results / "g" / "figures", results / "g" / "report.html")
    return results


def test_partial_grid_is_marked_and_lists_the_missing_run(partial_grid: Path) -> None:
    tables = partial_grid / "g" / "tables"
    status = (tables / "status.txt").read_text()
    assert status == ("PARTIAL: 5 of 6 runs of grid 'g' finished; these tables leave out the other 1 (1 failed), "
                      "listed with the log to read in missing_runs.txt.\n")
    assert (partial_grid / "g" / "figures" / "status.txt").read_text() == status
    log = (partial_grid / "logs" / "train" / TRAINED.format(method="sweet", seed=2)).as_posix() + ".log"
    missing = (tables / "missing_runs.txt").read_text().splitlines()
    assert missing == [f"{(partial_grid / 'runs' / RUN.format(method='sweet', seed=2)).as_posix()}: failed at "
                       f"train: ValueError: loss is nan (read {log})"]
    runs = pd.read_csv(tables / "runs.csv")
    assert runs["status"].value_counts().to_dict() == {"finished": 5, "failed": 1}
    assert runs.loc[runs["status"] == "failed", ["method", "seed", "stopped_at"]].values.tolist() == [
        ["sweet", 2, "train"]]
    for md in ("claims.md", "individual_exits_summary.md"):
        assert f"**{status.strip()}**" in (tables / md).read_text()
    # the tables use the finished runs: SWEET has one seed left, paired with EE's seed 1
    claims = pd.read_csv(tables / "claims.csv")
    sweet_ee = claims[(claims["claim"] == "2") & (claims["scope"] == "setting")].iloc[0]
    assert sweet_ee["n"] == 1 and sweet_ee["verdict"] == "inconclusive (1 seed)"
    mm_ee = claims[(claims["claim"] == "1") & (claims["scope"] == "setting")].iloc[0]
    assert mm_ee["n"] == 2 and mm_ee["verdict"] in ("reproduced", "contradicted", "inconclusive")
    assert json.loads((tables / "grid.json").read_text()) == spec(root=partial_grid.as_posix())
    assert set(runs["run_id"].astype(str).str.zfill(8)) == {"00000001", "00000002"}


def test_report_first_page_has_grid_runs_claims_and_the_notice(partial_grid: Path) -> None:
    html = (partial_grid / "g" / "report.html").read_text()
    first_page = html.split("</section>")[0]
    for heading in ("The grid", "What ran", "The paper's claims"):
        assert f"<h2>{heading}</h2>" in first_page, heading
    assert '<p class="partial">PARTIAL: 5 of 6 runs' in first_page
    assert "failed at train: ValueError: loss is nan" in first_page
    assert first_page.count('<td class="') >= 7  # one verdict cell per claim
    assert "<img" not in first_page  # figures come after the first page
    # captions travel with their figures; a section without figures or tables is left out
    index = json.loads((partial_grid / "g" / "figures" / "index.json").read_text())
    for entry in index["figures"]:
        assert f"<figcaption>{entry['caption'].replace(chr(39), '&#39;')}</figcaption>" in html
    assert "Gradient conflict" in html  # EE recorded the probe in the fake runs
    sweet_only = [e["caption"] for e in index["figures"] if e["section"] == "individual_exits"][0]
    assert "EE 2, SWEET 1, MM 2 seeds" in sweet_only


def test_no_empty_sections_and_captions_follow_the_data(tmp_path: Path) -> None:
    results = tmp_path / "results"
    runs = write_fake_grid(results / "runs", tasks=("synthetic",), budgets=(100,), methods=("sweet", "mm"),
                           seeds=(1,))  # no EE: no gradient-conflict probe, one seed
    aggregate(runs, results / "g" / "tables", {**spec(methods=("sweet", "mm"), seeds=(1,)), "runs": []})
    make_figures(results / "g" / "tables", results / "g" / "figures", formats=("png",))
    make_report(results / "g" / "tables", results / "g" / "figures", results / "g" / "report.html")
    html = (results / "g" / "report.html").read_text()
    assert "Gradient conflict" not in html and not list((results / "g" / "figures" / "gradient_conflict").iterdir())
    headings = re.findall(r"<h2>(\d+)\. ([^<]+)</h2>", html)
    assert [int(n) for n, _ in headings] == list(range(1, len(headings) + 1))  # numbered without gaps
    assert "complete: all 2 runs of grid &#39;g&#39; finished." in html and 'class="partial"' not in html
    captions = json.loads((results / "g" / "figures" / "index.json").read_text())["figures"]
    speed = [c["caption"] for c in captions if c["section"] == "speed_accuracy" and "one panel" not in c["caption"]]
    assert all("one seed, so no band" in c for c in speed) and all("1 seed per method" in c for c in speed[1:])
    assert "inconclusive (1 seed)" in html and "not tested (no EE runs)" in html
    assert "DeBERTa SWEET figures may be EE" in html  # the reference script's parity caveat, by the claims


def test_training_loss_table_is_tidy_and_read_from_the_training_folder(partial_grid: Path) -> None:
    """training_loss.csv: one row per finished run × logged step × exit, read from the calibrated folder's parent
    (MM: member k's only exit is exit k); the Trainer's end-of-training summary is not a step."""
    from test_figures import EXIT_LAYERS, fake_exit_losses

    table = pd.read_csv(partial_grid / "g" / "tables" / "training_loss.csv", dtype={"run_id": str})
    assert list(table.columns) == ["task", "model", "budget", "method", "seed", "run_id", "step", "exit",
                                   "exit_layer", "loss"]
    steps = list(range(10, 110, 10))
    finished = [("ee", 1), ("ee", 2), ("sweet", 1), ("mm", 1), ("mm", 2)]  # SWEET seed 2 failed in training
    assert sorted(set(zip(table["method"], table["seed"]))) == sorted(finished)
    assert len(table) == len(finished) * len(steps) * len(EXIT_LAYERS)
    assert not table.duplicated(["method", "seed", "step", "exit"]).any()
    assert table.groupby(["method", "seed", "exit"])["step"].apply(list).map(lambda s: s == steps).all()
    for method, seed in finished:
        expected = fake_exit_losses(method, seed, range(10, 110, 10))
        run = table[(table["method"] == method) & (table["seed"] == seed)]
        assert set(run["run_id"]) == {f"0000000{seed}"} and set(run["task"]) == {"synthetic"}
        for k, layer in enumerate(EXIT_LAYERS, start=1):
            at_exit = run[run["exit"] == k].sort_values("step")
            assert at_exit["loss"].tolist() == pytest.approx(expected[k]), (method, seed, k)
            assert set(at_exit["exit_layer"]) == {layer}
    # the records were in the training folders, not the calibrated ones
    trained = partial_grid / "runs" / TRAINED.format(method="mm", seed=1)
    assert (trained / "members" / "member_3.json").is_file() and not (trained / "cal-pool1000" / "members").exists()


def test_training_dynamics_figures_captions_and_section(partial_grid: Path, tmp_path: Path) -> None:
    index = json.loads((partial_grid / "g" / "figures" / "index.json").read_text())
    entries = [e for e in index["figures"] if e["section"] == "training_loss"]
    assert [e["files"] for e in entries] == [["training_loss/synthetic__tiny-bert__b100.png"]]  # one per setting
    caption = entries[0]["caption"]
    assert caption.startswith("Training dynamics, synthetic · tiny-bert · 100 training examples (EE 2, SWEET 1, MM 2 "
                              "seeds): each exit's training loss")
    assert "one panel per exit (4 exits" in caption and "MM's exit k is its member k" in caption
    assert "the band is ± 1 standard deviation over seeds" in caption
    html = (partial_grid / "g" / "report.html").read_text()
    sections = re.findall(r"<h2>\d+\. ([^<]+)</h2>", html)
    assert sections.index("Training dynamics") == sections.index("Individual exits") + 1
    # runs without training records (copied without them): no rows, no figure, no section
    results = tmp_path / "results"
    runs = write_fake_grid(results / "runs", tasks=("synthetic",), budgets=(100,), methods=("ee", "mm"), seeds=(1,))
    for record in [*(results / "runs").rglob("train_metrics.json"), *(results / "runs").rglob("member_*.json")]:
        record.unlink()
    aggregate(runs, results / "g" / "tables")
    assert pd.read_csv(results / "g" / "tables" / "training_loss.csv").empty
    make_figures(results / "g" / "tables", results / "g" / "figures", formats=("png",))
    assert not list((results / "g" / "figures" / "training_loss").iterdir())
    make_report(results / "g" / "tables", results / "g" / "figures", results / "g" / "report.html")
    assert "Training dynamics" not in (results / "g" / "report.html").read_text()


def test_report_is_byte_reproducible(partial_grid: Path, tmp_path: Path) -> None:
    make_report(partial_grid / "g" / "tables", partial_grid / "g" / "figures", tmp_path / "again.html")
    assert (tmp_path / "again.html").read_bytes() == (partial_grid / "g" / "report.html").read_bytes()


# ------------------------------------------------------------------------------------------------ grids
def _config(grids: dict) -> tuple[dict, dict]:
    """config.yaml with these grids over the demo's task and model, validated (models resolved)."""
    config = merge(load_config_file(ROOT / "config.yaml"), {"grids": grids})
    config["grids"] = grids
    config["grid"] = next(iter(grids))
    return config, validate(config, base_dir=ROOT)


def test_the_grid_whose_runs_finished_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # results/ is relative to where snakemake runs
    axes = {"tasks": ["synthetic"], "models": ["tiny-bert"], "budgets": [100]}
    config, models = _config({"small": {**axes, "methods": ["ee", "sweet", "mm"], "seeds": [1]},
                              "big": {**axes, "methods": ["ee", "sweet", "mm"], "seeds": [1, 2]},
                              "other": {**axes, "methods": ["ee"], "seeds": [7]}})
    assert last_finished_grid(config, models) is None  # a fresh clone
    for run in layout_grid_runs(config, "small", models):  # small ⊂ big: big's seed-1 runs are small's
        write_fake_run(Path(run.calibrated_dir), "synthetic", "tiny-bert", 100, run.method, 1)
    # the newest run belongs to both grids: the more complete one, small (3 of 3, big 3 of 6)
    assert last_finished_grid(config, models) == ("small", 3, 3)
    other = Path(layout_grid_runs(config, "other", models)[0].calibrated_dir)
    write_fake_run(other, "synthetic", "tiny-bert", 100, "ee", 7)
    os.utime(other / "curves.csv", ns=(2**62, 2**62))  # later than the rest
    assert last_finished_grid(config, models) == ("other", 1, 1)


def test_fingerprint_changes_when_a_run_finishes_or_fails(tmp_path: Path) -> None:
    results = tmp_path / "results"
    runs = grid_spec_runs(spec(seeds=(1,), root=results.as_posix()))
    write_fake_run(Path(runs[0][0]), "synthetic", "tiny-bert", 100, "ee", 1)
    before = runs_fingerprint(runs)
    assert runs_fingerprint(runs) == before
    write_log(results, "split", TRAINED.format(method="sweet", seed=1), "error: budget too large\n")
    failed = runs_fingerprint(runs)
    assert failed != before
    write_fake_run(Path(runs[1][0]), "synthetic", "tiny-bert", 100, "sweet", 1)
    assert runs_fingerprint(runs) not in (before, failed)


def test_reporting_commands_refuse_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sweet.cli import main

    cases = [
        (["figures", "--tables", str(tmp_path / "none"), "--out", str(tmp_path / "f")], "--tables: "),
        (["report", "--tables", str(tmp_path / "none"), "--figures", str(tmp_path / "none"), "--out",
          str(tmp_path / "r.html")], "holds no claims.csv"),
        (["aggregate", "--grid-spec", '{"name": "g"}', "--out", str(tmp_path / "t")], "--grid-spec: missing key"),
        (["figures", "--tables", str(tmp_path), "--out", str(tmp_path / "f"), "--formats", "gif"], "--formats"),
    ]
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert fragment in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written
