"""`--resume`: an interrupted run continues to exactly the result of an uninterrupted one, and a resume
that would not (changed config, no checkpoints) is refused with one clear line."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from resume_helpers import Stop, accuracies, crash_after, latest_step, tiny_config, toy_train
from teli import pipeline
from teli.cli import main
from teli.errors import TeliError
from teli.resume import Interrupted, StageCheckpoints


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    summary = pipeline.run(tiny_config(out, "ref"))
    return out / "ref", summary


@pytest.mark.parametrize("stage, step", [("teacher2", 13), ("supervised", 30), ("teli", 17)])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, reference, stage, step):
    ref_dir, ref = reference
    cfg = tiny_config(tmp_path, "run")
    crash_after(monkeypatch, stage, step)
    with pytest.raises(Stop):
        pipeline.run(cfg)
    assert latest_step(tmp_path / "run", stage) == step // 10 * 10  # the crash lost the steps since the last checkpoint
    summary = pipeline.run(cfg, resume=tmp_path / "run")
    assert accuracies(summary) == accuracies(ref)  # bitwise-equal floats
    for f in ["student.safetensors", "supervised.safetensors", "teachers/teacher_2.safetensors"]:
        mine, theirs = load_file(tmp_path / "run" / f), load_file(ref_dir / f)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), f


def test_signal_checkpoints_then_stops_and_resume_matches(tmp_path, monkeypatch):
    ref, _ = toy_train(tmp_path / "ref", steps=12, every=5)
    original = StageCheckpoints.after_step

    def send_sigint_at_step_7(self, step, total, state, stop_requested):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # lands before step 8 ends: step 8 is checkpointed, then stop
        original(self, step, total, state, stop_requested)

    monkeypatch.setattr(StageCheckpoints, "after_step", send_sigint_at_step_7)
    with pytest.raises(Interrupted, match="step 8"):
        toy_train(tmp_path / "run", steps=12, every=5)
    monkeypatch.setattr(StageCheckpoints, "after_step", original)
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 8
    resumed, _ = toy_train(tmp_path / "run", steps=12, every=5)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), ref.model.state_dict().values()))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored after training


def test_algorithm_extra_modules_and_optimizers_are_resumed(tmp_path, monkeypatch):
    ref, _ = toy_train(tmp_path / "ref", steps=12, every=5, extra=True, ema_decay=0.9)
    crash_after(monkeypatch, "toy", 7)
    with pytest.raises(Stop):
        toy_train(tmp_path / "run", steps=12, every=5, extra=True, ema_decay=0.9)
    resumed, _ = toy_train(tmp_path / "run", steps=12, every=5, extra=True, ema_decay=0.9)
    for mine, theirs in [(resumed.model, ref.model), (resumed.algorithm.head, ref.algorithm.head)]:
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    weights = load_file(tmp_path / "run" / "ckpt-000012" / "weights.safetensors")
    assert "extra.head.weight" in weights and any(k.startswith("ema.") for k in weights)


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_resume_refused_when_config_changed(tmp_path, monkeypatch, capsys):
    crash_after(monkeypatch, "teacher1", 10)
    with pytest.raises(Stop):
        pipeline.run(tiny_config(tmp_path, "run"))
    run_dir = str(tmp_path / "run")
    rc, err = _cli(capsys, "run", "--resume", run_dir, "--set", "teli.gamma=0.2", "--json")
    assert rc == 2 and err.count("\n") == 1 and "teli.gamma" in err and "0.1" in err
    rc, err = _cli(capsys, "run", "--resume", run_dir, "--set", "student.optim.log_every=5", "--json")
    assert rc == 2 and "student.optim.log_every" in err and "--allow-change" in err
    rc, err = _cli(capsys, "run", "--resume", run_dir, "--allow-change", "seed", "--json")
    assert rc == 2 and "seed" in err.splitlines()[0]
    # a harmless change is accepted once allowed, and the resumed run completes
    rc, err = _cli(capsys, "run", "--resume", run_dir, "--set", "student.optim.log_every=5", "--allow-change", "*.log_every", "--json")
    assert rc == 0, err


def test_resume_refused_when_checkpoint_config_differs(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "run")
    crash_after(monkeypatch, "teacher1", 10)
    with pytest.raises(Stop):
        pipeline.run(cfg)
    (tmp_path / "run" / "config.yaml").write_text((tmp_path / "run" / "config.yaml").read_text().replace("gamma: 0.1", "gamma: 0.3"))
    changed = cfg.model_copy(update={"teli": cfg.teli.model_copy(update={"gamma": 0.3})})
    with pytest.raises(TeliError, match=r"teli\.gamma differs from checkpoint"):
        pipeline.run(changed, resume=tmp_path / "run")


def test_resume_without_checkpoints_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    rc, err = _cli(capsys, "run", "--resume", str(tmp_path / "plain"))
    assert rc == 2 and "not a teli run folder" in err and err.count("\n") == 1
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("seed: 0\n")
    rc, err = _cli(capsys, "run", "--resume", str(old))
    assert rc == 2 and "no checkpoints to resume from" in err and err.count("\n") == 1


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    rc, err = _cli(capsys, "run", "--out", str(tmp_path), "--name", "run")
    assert rc == 2 and "already exists" in err and "--resume" in err
    rc, err = _cli(capsys, "run", "--resume", str(run_dir), "--overwrite")
    assert rc == 2 and "exclude each other" in err
    assert (run_dir / "config.yaml").read_text() == "seed: 0\n"  # untouched
