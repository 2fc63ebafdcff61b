"""Bad input, one table: every row builds its situation in tmp_path, runs `teli.cli.main` in-process and
expects exit status 2, exactly one stderr line `teli: error: ...` naming the problem, no traceback, and no
existing file under tmp_path changed (new files only where the row says so: none at all for refused runs).

Two neighbours of the table are not errors and have their own tests: `data.on_corrupt=skip` (the run
goes on without the unreadable image) and a batch larger than the labelled set (clamped to its size).
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from data_fakes import no_network  # noqa: F401 (autouse fixture: no downloads, no system copies of datasets)
from test_user_data import image_folder

from teli import checkpoint
from teli.checkpoint import sha256_bytes
from teli.cli import main

# Tiny budgets: a whole refused-or-not run stays around a second on two slow vCPUs.
FAST = ["--set", "teachers.optim.steps=10", "--steps", "10", "--quiet", "--threads", "1", "--no-baseline"]


# ---------------------------------------------------------------------------------------------
# Helpers


def snapshot(root: Path) -> dict[str, tuple[str, int] | None]:
    """Every file under root (relative path -> (sha256, mtime_ns)) and every folder (-> None)."""
    out: dict[str, tuple[str, int] | None] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) if p.is_file() else None
    return out


def assert_unchanged(before: dict, after: dict, new_ok: tuple[str, ...] = ()) -> None:
    """No file of `before` changed or vanished; new paths only at or under the `new_ok` folders (and their parents)."""
    changed = sorted(k for k, v in before.items() if after.get(k, "<gone>") != v)
    assert not changed, f"existing files changed or removed: {changed}"

    def allowed(path: str) -> bool:
        return any(path == ok or path.startswith(ok + "/") or ok.startswith(path + "/") for ok in new_ok)

    new = sorted(k for k in after.keys() - before.keys() if not allowed(k))
    assert not new, f"unexpected new files or folders: {new}"


def assert_one_line_error(code: int, err: str, match: tuple[str, ...]) -> str:
    lines = err.splitlines()
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("teli: error: "), lines[0]
    for m in match:
        assert m.lower() in lines[0].lower(), f"{m!r} not in: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="module")
def teachers_run(tmp_path_factory):
    """One tiny `teli teachers` run (cnn + mlp teachers on digits) for the whole module: copy, never modify."""
    out = tmp_path_factory.mktemp("teachers")
    assert main(["teachers", "--out", str(out), "--name", "t", *FAST]) == 0
    return out / "t"


@dataclass
class Situation:
    """What a row's builder gets: its tmp_path, the module's teachers run and a monkeypatch."""

    tmp: Path
    teachers: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> str:
        return str(self.tmp / "runs")

    def run(self, *extra: str) -> list[str]:
        return ["run", "--out", self.out, *FAST, *extra]

    def copy_teachers(self, name: str = "t", under: str = "src") -> Path:
        return Path(shutil.copytree(self.teachers, self.tmp / under / name))

    def write(self, rel: str, text: str) -> Path:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def mkdir(self, rel: str) -> str:
        (self.tmp / rel).mkdir(parents=True)
        return str(self.tmp / rel)

    def npz(self, rel: str, **arrays) -> str:
        path = self.tmp / rel
        np.savez(path, **arrays)
        return f"npz:{path}"


@dataclass(frozen=True)
class Case:
    build: Callable[[Situation], list[str]]  # makes the situation, returns the CLI's argv
    match: tuple[str, ...]  # substrings the error line must hold (case-insensitive)
    new_ok: tuple[str, ...] = ()  # where new files may appear (relative to tmp_path); none for refused runs
    check: Callable[[Situation], None] | None = field(default=None)  # more assertions after the call


# ---------------------------------------------------------------------------------------------
# Builders for the rows that need more than flags


def edit_sidecar(s: Situation, **changes) -> list[str]:
    run = s.copy_teachers()
    sidecar = run / "teachers" / "teacher_2.json"
    meta = json.loads(sidecar.read_text())
    for key, value in changes.items():
        assert meta[key] != value
        meta[key] = value
    sidecar.write_text(json.dumps(meta))
    return ["distill", "--teachers", str(run), "--out", s.out, *FAST]


def swapped_weights(s: Situation) -> list[str]:
    """teacher_1's sidecar says cnn, but its .safetensors holds teacher_2's mlp weights."""
    run = s.copy_teachers()
    meta = json.loads((run / "teachers" / "teacher_1.json").read_text())
    assert meta["arch"]["arch"] == "cnn"
    assert json.loads((run / "teachers" / "teacher_2.json").read_text())["arch"]["arch"] == "mlp"
    shutil.copyfile(run / "teachers" / "teacher_2.safetensors", run / "teachers" / "teacher_1.safetensors")
    return ["distill", "--teachers", str(run), "--out", s.out, *FAST]


def truncated_weights(s: Situation) -> list[str]:
    run = s.copy_teachers()
    weights = run / "teachers" / "teacher_1.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return ["distill", "--teachers", str(run), "--out", s.out, *FAST]


def existing_run_folder(s: Situation) -> list[str]:
    s.copy_teachers("t", under="runs")
    return ["teachers", "--out", s.out, "--name", "t", *FAST]


def resume_changed(*flags: str) -> Callable[[Situation], list[str]]:
    def build(s: Situation) -> list[str]:
        run = s.copy_teachers("t", under="runs")
        return ["teachers", "--resume", str(run), "--quiet", *flags]

    return build


def broken_image(s: Situation) -> Path:
    root = image_folder(s.tmp / "pets")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def corrupt_image(s: Situation) -> list[str]:
    root = broken_image(s)
    return s.run("--data", f"folder:{root}", "--data-root", str(s.tmp / "dataroot"), "--set", "data.on_corrupt=error")


def empty_class_folder(s: Situation) -> list[str]:
    root = image_folder(s.tmp / "pets")
    (root / "train" / "fox").mkdir()
    return s.run("--data", f"folder:{root}", "--data-root", str(s.tmp / "dataroot"))


X6 = np.zeros((6, 4, 4, 1), dtype=np.uint8)
Y6 = np.array([0, 1, 0, 1, 0, 1])


def npz_case(arrays: dict, *extra: str) -> Callable[[Situation], list[str]]:
    return lambda s: s.run("--data", s.npz("d.npz", **arrays), *extra)


NOSPACE_RUN = "runs/nospace"


def no_space(s: Situation) -> list[str]:
    """A tiny teachers run whose second checkpoint of teacher1 (step 10) hits a full disk."""
    real_pause = checkpoint._fault_pause

    def full_disk(path: Path) -> None:  # called in atomic_write_bytes after the data is written, before the rename
        if ".ckpt-000010.tmp" in str(path) and "teacher1" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_pause(path)

    s.monkeypatch.setattr(checkpoint, "_fault_pause", full_disk)
    return ["teachers", "--out", s.out, "--name", "nospace", *FAST, "--set", "checkpoint.every=5"]


def previous_checkpoint_intact(s: Situation) -> None:
    stage = s.tmp / NOSPACE_RUN / "checkpoints" / "teacher1"
    assert json.loads((stage / "latest.json").read_text()) == {"step": 5, "folder": "ckpt-000005"}
    assert sorted(p.name for p in stage.iterdir()) == ["ckpt-000005", "latest.json"]  # no half-written folder
    meta = json.loads((stage / "ckpt-000005" / "meta.json").read_text())
    for name, want in meta["files"].items():
        data = (stage / "ckpt-000005" / name).read_bytes()
        assert len(data) == want["bytes"] and sha256_bytes(data) == want["sha256"], name
    s.monkeypatch.undo()  # space again: the run continues from that checkpoint
    assert main(["teachers", "--resume", str(s.tmp / NOSPACE_RUN), "--quiet"]) == 0
    assert (s.tmp / NOSPACE_RUN / "teachers" / "teacher_2.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# The table

CASES: dict[str, Case] = {
    # names and choices
    "unknown dataset": Case(lambda s: s.run("--dataset", "nope"), ("unknown dataset 'nope'",)),
    "unknown model": Case(lambda s: s.run("--set", "student.model.arch=nope"), ("unknown model 'nope'",)),
    "unknown algorithm": Case(lambda s: s.run("--algorithm", "nope"), ("unknown algorithm 'nope'",)),
    "unknown lambda mode": Case(lambda s: s.run("--lambda", "sometimes"), ("teli.lambda_mode", "sometimes")),
    # numbers out of range
    "k zero": Case(lambda s: s.run("-k", "0"), ("data.labels_per_class",)),
    "k larger than a class": Case(lambda s: s.run("-k", "1000"), ("fewer than the 1000",)),
    "learning rate zero": Case(lambda s: s.run("--set", "student.optim.lr=0"), ("student.optim.lr", "learning rate")),
    "learning rate negative": Case(lambda s: s.run("--set", "teachers.optim.lr=-0.1"), ("teachers.optim.lr", "learning rate")),
    "learning rate nan": Case(lambda s: s.run("--set", "student.optim.lr=.nan"), ("student.optim.lr", "learning rate")),
    "threshold above one": Case(lambda s: s.run("--threshold", "1.5"), ("teli.threshold",)),
    "threshold below zero": Case(lambda s: s.run("--threshold", "-0.1"), ("teli.threshold",)),
    "gamma negative": Case(lambda s: s.run("--gamma", "-0.5"), ("teli.gamma",)),
    "temperature infinite": Case(lambda s: s.run("--set", "teli.temperature=.inf"), ("teli.temperature", "finite")),
    "kd temperature infinite": Case(lambda s: s.run("--set", "teli.kd_temperature=inf"), ("teli.kd_temperature", "finite")),
    # config files
    "unknown key in yaml file": Case(lambda s: s.run("--config", str(s.write("c.yaml", "teli:\n  gamma: 0.2\n  treshold: 0.5\n"))),
                                     ("unknown config key 'teli.treshold'",)),
    "malformed yaml file": Case(lambda s: s.run("--config", str(s.write("bad.yaml", "teli:\n  gamma: [0.2\n  threshold: 0.5\n"))),
                                ("bad.yaml", "not valid YAML")),
    "infinite temperature in yaml file": Case(lambda s: s.run("--config", str(s.write("c.yaml", "teli:\n  temperature: .inf\n"))),
                                              ("teli.temperature", "c.yaml")),
    # teacher checkpoints that do not fit
    "teacher for another number of classes": Case(lambda s: edit_sidecar(s, num_classes=7), ("teacher_2", "num_classes=7")),
    "teacher for another input shape": Case(lambda s: edit_sidecar(s, input_shape=[3, 32, 32]), ("teacher_2", "input_shape")),
    "teacher weights of another architecture": Case(swapped_weights, ("teacher_1.safetensors", "does not fit the model")),
    "teacher checkpoint truncated": Case(truncated_weights, ("teacher_1.safetensors", "corrupt or truncated")),
    # run folders
    "run folder exists without resume or overwrite": Case(existing_run_folder, ("already exists", "--resume", "--overwrite")),
    "resume with another seed": Case(resume_changed("--seed", "5"), ("cannot resume", "seed")),
    "resume with another gamma": Case(resume_changed("--set", "teli.gamma=0.3"), ("cannot resume", "teli.gamma")),
    "resume and overwrite together": Case(lambda s: [*resume_changed()(s), "--overwrite"], ("exclude each other",)),
    # data
    "dataset missing offline": Case(lambda s: s.run("--dataset", "mnist", "--data-root", s.mkdir("empty")),
                                    ("dataset 'mnist' not found", "--download")),
    "corrupt image with on_corrupt=error": Case(corrupt_image, ("broken.png", "on_corrupt=skip")),
    "empty class folder": Case(empty_class_folder, ("train/fox has no images",)),
    "npz lengths differ": Case(npz_case({"x_train": X6, "y_train": Y6[:5]}), ("d.npz", "5 labels but its images 6")),
    "npz labels out of range": Case(npz_case({"x_train": X6, "y_train": Y6, "x_test": X6[:2], "y_test": np.array([0, 2])}),
                                    ("y_test", "label 2, out of range")),
    "unlabelled set empty": Case(npz_case({"x_train": X6, "y_train": Y6, "x_test": X6[:2], "y_test": Y6[:2]}, "-k", "3"),
                                 ("unlabelled set is empty",)),
    # the disk fills up while a checkpoint is written: the run folder stays, with the previous checkpoint whole
    "no space left writing a checkpoint": Case(no_space, ("no space left", ".ckpt-000010.tmp", "--resume"),
                                               new_ok=(NOSPACE_RUN,), check=previous_checkpoint_intact),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, teachers_run, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)  # a stray relative write (data/, runs/) lands where the snapshot sees it
    s = Situation(tmp_path, teachers_run, monkeypatch)
    argv = case.build(s)
    before = snapshot(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, case.match)
    assert out == ""
    assert_unchanged(before, snapshot(tmp_path), case.new_ok)
    if case.check:
        case.check(s)


def test_table_is_big_enough():
    assert len(CASES) >= 25


# ---------------------------------------------------------------------------------------------
# Next to the table: not errors


def test_corrupt_image_is_skipped_with_on_corrupt_skip(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    s = Situation(tmp_path, Path("unused"), monkeypatch)
    root = broken_image(s)
    before = snapshot(root)
    code = main(s.run("--data", f"folder:{root}", "--data-root", str(tmp_path / "dataroot"), "-k", "2",
                      "--set", "data.on_corrupt=skip", "--name", "r", "--json"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "skipped 1 unreadable image" in err and "broken.png" in err
    assert json.loads(out)["dataset"] == "pets"
    assert snapshot(root) == before  # the data is only read


def test_batch_larger_than_the_labelled_set_is_clamped(tmp_path, monkeypatch, capsys):
    """Not an error, by decision: a labelled batch larger than the labelled set (here 64 > 10 classes x 2)
    is clamped to the labelled set's size, for the teachers, the student and the baseline alike, since
    drawing the whole labelled set each step is the only sensible reading. The config keeps what was
    asked; summary.json's `labelled_batch` says what each stage used."""
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--out", str(tmp_path / "runs"), "--name", "r", "-k", "2", "--set", "teachers.optim.steps=3",
                 "--steps", "3", "--quiet", "--threads", "1", "--json",
                 "--set", "student.optim.batch_size=64", "--set", "teachers.optim.batch_size=64"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["labelled_batch"] == {"teacher1": 10 * 2, "teacher2": 20, "supervised": 20, "teli": 20}
    config = (tmp_path / "runs" / "r" / "config.yaml").read_text()
    assert "batch_size: 64" in config  # what was asked is kept
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["labelled_batch"] == summary["labelled_batch"]
