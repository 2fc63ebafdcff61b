"""Bad input: exit status 2, one line `teli: error: ...` on stderr, no traceback, no run folder.

Most cases call `teli.cli.main` in-process (fast); a few run the installed `teli` console script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from teli.cli import main

from conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def assert_refused(code: int, err: str, out_dir: Path, *, match: str) -> None:
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("teli: error: "), lines[0]
    assert match.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir()), f"a run folder was created: {list(out_dir.iterdir())}"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Refused input, in-process

BAD_RUNS = {
    "unknown dataset": (["--dataset", "nope"], "unknown dataset 'nope'"),
    "unknown student model": (["--set", "student.model.arch=nope"], "unknown model 'nope'"),
    "unknown teacher model": (["--set", "teachers.models=[{arch: cnn}, {arch: nope}]"], "unknown model 'nope'"),
    "unknown algorithm": (["--algorithm", "nope"], "unknown algorithm 'nope'"),
    "k larger than a class": (["-k", "1000"], "fewer than the 1000"),
    "k zero": (["-k", "0"], "data.labels_per_class"),
    "threshold above one": (["--threshold", "1.5"], "teli.threshold"),
    "threshold negative": (["--threshold", "-0.1"], "teli.threshold"),
    "nan learning rate": (["--set", "student.optim.lr=.nan"], "learning rate"),
    "negative gamma": (["--gamma", "-0.5"], "teli.gamma"),
    "unknown key on --set": (["--set", "teli.gama=0.2"], "unknown config key 'teli.gama'"),
    "unknown top-level key on --set": (["--set", "bogus=1"], "unknown config key 'bogus'"),
    "override without =": (["--set", "teli.gamma"], "not KEY=VALUE"),
    "one teacher only": (["--set", "teachers.models=[{arch: cnn}]"], "at least two teachers"),
    "bad lambda mode": (["--lambda", "sometimes"], "teli.lambda_mode"),
    "non-integer steps": (["--steps", "many"], "invalid int value"),
    "unknown flag": (["--frobnicate"], "unrecognized arguments"),
    "missing config file": (["--config", "does-not-exist.yaml"], "not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_run_input_is_refused(case, tmp_path, capsys):
    extra, match = BAD_RUNS[case]
    out_dir = tmp_path / "runs"
    code, _, err = cli(capsys, "run", "--out", str(out_dir), *TINY, *extra)
    assert_refused(code, err, out_dir, match=match)


@pytest.mark.parametrize("command", ["teachers", "distill"])
def test_bad_input_refused_by_other_commands(command, tmp_path, capsys, teachers_run):
    out_dir = tmp_path / "runs"
    extra = ["--teachers", str(teachers_run)] if command == "distill" else []
    code, _, err = cli(capsys, command, "--out", str(out_dir), *TINY, *extra, "--set", "student.optim.lr=-1")
    assert_refused(code, err, out_dir, match="learning rate")


@pytest.mark.parametrize("text, match", [
    ("teli:\n  gamma: 0.2\n  treshold: 0.5\n", "unknown config key 'teli.treshold'"),
    ("teli:\n  gamma: [0.2\n  threshold: 0.5\n", "not valid YAML"),
    ("- just\n- a list\n", "must hold a mapping"),
], ids=["unknown key", "malformed", "not a mapping"])
def test_bad_yaml_file(tmp_path, capsys, text, match):
    config = write(tmp_path / "c.yaml", text)
    out_dir = tmp_path / "runs"
    code, _, err = cli(capsys, "run", "--config", str(config), "--out", str(out_dir), *TINY)
    assert_refused(code, err, out_dir, match=match)


def test_unknown_command(tmp_path, capsys):
    code, _, err = cli(capsys, "frobnicate")
    assert_refused(code, err, tmp_path / "runs", match="invalid choice")


def test_evaluate_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", str(tmp_path))
    assert_refused(code, err, tmp_path / "runs", match="not a teli run folder")


def test_distill_from_a_folder_that_is_not_a_run(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    code, _, err = cli(capsys, "distill", "--teachers", str(tmp_path / "nowhere"), "--out", str(out_dir), *TINY)
    assert_refused(code, err, out_dir, match="not a teli run folder")


# ---------------------------------------------------------------------------------------------
# Teacher checkpoints that do not fit


@pytest.fixture(scope="module")
def teachers_run(tmp_path_factory):
    """A `teli teachers` run at tiny budgets, made once for this module (do not modify it)."""
    out = tmp_path_factory.mktemp("teachers")
    assert main(["teachers", "--out", str(out), "--name", "t", *TINY]) == 0
    return out / "t"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_teacher_checkpoint_for_another_number_of_classes(teachers_run, tmp_path, capsys):
    run = copy_run(teachers_run, tmp_path / "t7")
    sidecar = run / "teachers" / "teacher_2.json"
    meta = json.loads(sidecar.read_text())
    assert meta["num_classes"] == 10
    meta["num_classes"] = 7
    sidecar.write_text(json.dumps(meta))
    out_dir = tmp_path / "runs"
    code, _, err = cli(capsys, "distill", "--teachers", str(run), "--out", str(out_dir), *TINY)
    assert_refused(code, err, out_dir, match="num_classes=7")


def test_truncated_teacher_checkpoint(teachers_run, tmp_path, capsys):
    run = copy_run(teachers_run, tmp_path / "cut")
    weights = run / "teachers" / "teacher_1.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out_dir = tmp_path / "runs"
    code, _, err = cli(capsys, "distill", "--teachers", str(run), "--out", str(out_dir), *TINY)
    assert_refused(code, err, out_dir, match="corrupt or truncated")


def test_teachers_run_without_teachers(teachers_run, tmp_path, capsys):
    run = copy_run(teachers_run, tmp_path / "empty")
    shutil.rmtree(run / "teachers")
    out_dir = tmp_path / "runs"
    code, _, err = cli(capsys, "distill", "--teachers", str(run), "--out", str(out_dir), *TINY)
    assert_refused(code, err, out_dir, match="no teachers in")


# ---------------------------------------------------------------------------------------------
# Existing run folders


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_run_folder_is_left_untouched(teachers_run, tmp_path, capsys):
    out_dir = tmp_path / "runs"
    run = copy_run(teachers_run, out_dir / "t")
    before = snapshot(run)
    assert "config.yaml" in before and "teachers/teacher_1.safetensors" in before
    code, _, err = cli(capsys, "teachers", "--out", str(out_dir), "--name", "t", *TINY)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("teli: error: ")
    assert "already exists" in err and "--overwrite" in err
    assert snapshot(run) == before
    assert [p.name for p in out_dir.iterdir()] == ["t"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    precious = out_dir / "mine"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("do not delete")
    code, _, err = cli(capsys, "teachers", "--out", str(out_dir), "--name", "mine", "--overwrite", *TINY)
    assert code == 2 and err.startswith("teli: error: ") and "not a teli run folder" in err
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_overwrite_replaces_a_run(teachers_run, tmp_path, capsys):
    out_dir = tmp_path / "runs"
    run = copy_run(teachers_run, out_dir / "t")
    (run / "stale.txt").write_text("from before")
    code, _, err = cli(capsys, "teachers", "--out", str(out_dir), "--name", "t", "--overwrite", *TINY)
    assert code == 0, err
    assert not (run / "stale.txt").exists() and (run / "teachers" / "teacher_1.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# The installed console script


def teli_script(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("teli")
    if exe is None:
        pytest.skip("the teli console script is not installed")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([exe, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra, match", [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--set", "student.optim.lr=.nan"], "learning rate"),
    (["--set", "student.model.arch=nope"], "unknown model 'nope'"),
])
def test_console_script_refuses_bad_input(extra, match, tmp_path):
    out_dir = tmp_path / "runs"
    proc = teli_script("run", "--out", str(out_dir), *TINY, *extra, cwd=tmp_path)
    assert_refused(proc.returncode, proc.stderr, out_dir, match=match)
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written beside it either


def test_console_script_uses_this_checkout():
    proc = teli_script("--help", cwd=REPO)
    assert proc.returncode == 0 and "distill" in proc.stdout
    probe = subprocess.run([sys.executable, "-c", "import teli; print(teli.__file__)"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
    assert Path(probe.stdout.strip()).resolve().is_relative_to(REPO / "src")


def test_every_advertised_lambda_mode_runs_or_is_refused_cleanly(tmp_path, capsys):
    """`--lambda fixed | beta | meta` (see --help): each either trains or fails with one clean line and no folder."""
    from typing import get_args

    from teli.config import TeliConfig

    modes = get_args(TeliConfig.model_fields["lambda_mode"].annotation)
    assert {"fixed", "beta", "meta"} <= set(modes)
    for mode in modes:
        out_dir = tmp_path / mode
        try:
            code, _, err = cli(capsys, "run", "--out", str(out_dir), "--name", "r", "--lambda", mode, "--no-baseline", "--json",
                               "--set", "teachers.optim.steps=3", "--steps", "3", "--quiet", "--threads", "1")
        except Exception as exc:  # noqa: BLE001 - a traceback is exactly the failure this test looks for
            pytest.fail(f"--lambda {mode} raised {type(exc).__name__}: {exc}")
        if code == 0:
            assert (out_dir / "r" / "student.safetensors").is_file()
        else:
            assert_refused(code, err, out_dir, match="lambda")
