"""Atomic outputs and security hygiene: what a killed or malicious input cannot do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweet.io import atomic_dir, atomic_path, write_csv, write_json, write_npz

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("sweet/**/*.py"), *ROOT.glob("workflow/**/*.smk"), ROOT / "workflow" / "Snakefile"])


class Boom(RuntimeError):
    pass


def test_a_writer_that_fails_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise Boom
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(Boom), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_bytes(b"\0" * 100)
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_result(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"score": 1})
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise Boom
    assert target.read_text().startswith("{\n") and '"score": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stale_temporaries_of_a_killed_job_are_removed_by_the_next_write(tmp_path: Path) -> None:
    (tmp_path / ".curves.csv.abc123.tmp").write_text("partial")
    (tmp_path / ".model.xyz.tmp").mkdir()
    write_csv(tmp_path / "curves.csv", pd.DataFrame({"a": [1]}))
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.csv", "model"]


def test_writers_are_byte_reproducible(tmp_path: Path) -> None:
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "name": np.array("ee")}
    write_npz(tmp_path / "a.npz", arrays)
    write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


# ---------------------------------------------------------------------------------------------------- security
def _python_trees() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text())) for p in ROOT.glob("sweet/**/*.py")]


def test_no_remote_code_eval_or_pickle_loading_in_the_sources() -> None:
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), f"{path}: eval/exec"
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"import pickle|allow_pickle=True|pickle\.load", text), f"{path}: pickle"


def test_every_auto_class_load_refuses_remote_code() -> None:
    """AutoModel*/AutoConfig loads pass trust_remote_code=False explicitly (tokenizers default to False)."""
    checked = 0
    for path, tree in _python_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile"), f"{path}:{node.lineno}: {node.func.id}"
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if node.func.attr == "from_pretrained" and isinstance(owner, ast.Name) and owner.id.startswith("Auto"):
                if owner.id == "AutoTokenizer":
                    continue
                keywords = {k.arg: k.value for k in node.keywords}
                flag = keywords.get("trust_remote_code")
                assert isinstance(flag, ast.Constant) and flag.value is False, f"{path}:{node.lineno}"
                checked += 1
    assert checked >= 5  # the scan really found the loads


def test_weights_are_written_as_safetensors(tmp_path: Path, tmp_path_factory) -> None:
    """Saved EE models hold no pickled weights."""
    import torch
    from tiny import backbone as tiny_backbone

    from sweet import EarlyExitModel

    torch.manual_seed(0)
    model = EarlyExitModel.from_pretrained(tiny_backbone("bert", tmp_path_factory), num_labels=2, exit_layers=[1, 4])
    model.save_pretrained(tmp_path / "saved")
    files = [p.name for p in (tmp_path / "saved").rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files), files


def test_results_are_readable_by_the_group_as_the_umask_allows(tmp_path: Path) -> None:
    """Temporaries are private (mkstemp/mkdtemp: 0600/0700); what replaces the final name gets the permissions
    the umask gives any new file, so collaborators on a shared cluster file system can read the results."""
    import os

    from sweet.io import atomic_dir, write_text

    umask = os.umask(0)
    os.umask(umask)
    write_text(tmp_path / "table.csv", "a,b\n")
    with atomic_dir(tmp_path / "model") as folder:
        (folder / "w.bin").write_bytes(b"x")
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~umask
    if umask == 0o022:
        assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o644
