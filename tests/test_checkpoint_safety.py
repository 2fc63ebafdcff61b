"""Checkpoints that cannot run code, survive a full disk and a truncation, and a loss that goes non-finite."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle

import pytest
import torch

from resume_helpers import toy_train
from teli.checkpoint import FAULT_SLEEP_ENV, atomic_write_bytes, load_torch_state, sha256_bytes
from teli.errors import TeliError


class Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):  # unpickling this calls open(target, "w"): it creates the file
        return (open, (self.target, "w"))


def _plant(folder, name: str, data: bytes) -> None:
    """Replace a checkpoint file and fix meta.json's digest, as an attacker who knows the format would."""
    (folder / name).write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": sha256_bytes(data)}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    toy_train(tmp_path / "ck", steps=5, every=5)
    target = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"optimizer": Payload(target)}, buffer)  # a real torch file (zip) carrying the payload
    payload = buffer.getvalue()
    torch.load(io.BytesIO(payload), weights_only=False)  # the payload is live: an unsafe load creates the file
    assert target.exists()
    target.unlink()
    _plant(tmp_path / "ck" / "ckpt-000005", "state.pt", payload)
    with pytest.raises(TeliError) as err:
        toy_train(tmp_path / "ck", steps=5, every=5)
    assert "refused" in str(err.value) and "\n" not in str(err.value)
    assert not target.exists()
    for data in (payload, pickle.dumps({"optimizer": Payload(target)})):  # torch file, bare pickle
        with pytest.raises(TeliError, match="refused"):
            load_torch_state(tmp_path / "payload.pt", data)
    assert not target.exists()


def test_no_space_left_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    real_fsync = os.fsync

    def disk_full_after_first_checkpoint(fd):
        pointer = folder / "latest.json"
        if pointer.is_file() and json.loads(pointer.read_text())["step"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_after_first_checkpoint)
    with pytest.raises(TeliError) as err:
        toy_train(folder, steps=10, every=5)
    message = str(err.value)
    assert message.startswith("no space left") and "free space" in message and "\n" not in message
    assert json.loads((folder / "latest.json").read_text())["step"] == 5
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-000005", "latest.json"]  # no half-written folder
    monkeypatch.undo()
    resumed, _ = toy_train(folder, steps=10, every=5)  # the kept checkpoint is whole: the stage continues
    reference, _ = toy_train(tmp_path / "ref", steps=10, every=5)
    assert all((a == b).all() for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()))


@pytest.mark.parametrize("victim", ["weights.safetensors", "state.pt", "rng.json"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, victim):
    toy_train(tmp_path / "ck", steps=5, every=5)
    path = tmp_path / "ck" / "ckpt-000005" / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TeliError, match="truncated or corrupt") as err:
        toy_train(tmp_path / "ck", steps=5, every=5)
    assert "\n" not in str(err.value)


def test_truncated_state_file_is_refused_by_the_loader_itself(tmp_path):
    toy_train(tmp_path / "ck", steps=5, every=5)
    data = (tmp_path / "ck" / "ckpt-000005" / "state.pt").read_bytes()
    with pytest.raises(TeliError, match="corrupt or truncated"):
        load_torch_state(tmp_path / "state.pt", data[: len(data) // 2])


def test_nonfinite_stop_names_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TeliError) as err:
        toy_train(tmp_path / "ck", steps=12, every=5, nan_at={7})
    message = str(err.value)
    assert "at step 7" in message and "loss_bad" in message and "step 5" in message and "\n" not in message
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["step"] == 5


def test_nonfinite_skip_skips_the_update_and_counts_it(tmp_path, monkeypatch):
    from teli.engine import MetricsLog

    logs = []
    monkeypatch.setattr(MetricsLog, "write", lambda self, record: logs.append(record))
    result, _ = toy_train(None, steps=12, nan_at={3, 7}, on_nonfinite="skip", log_every=4)
    assert result.steps == 12
    assert [r.get("skipped_steps", 0) for r in logs if "step" in r] == [1, 2, 2]
    assert all(v == v for r in logs for v in r.values() if isinstance(v, float))  # no NaN reached the averages


def test_fault_hook_pauses_between_write_and_rename(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_SLEEP_ENV, "0.01")
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert "teli-fault: pausing" in capsys.readouterr().err and (tmp_path / "f.bin").read_bytes() == b"x"
