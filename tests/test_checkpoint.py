"""Checkpoints: safetensors + JSON sidecar, atomic writes, corrupt files as TeliError, no pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from teli.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    check_meta,
    load_meta,
    load_model_state,
    load_tensors,
    save_model,
    save_tensors,
    sidecar_path,
)
from teli.config import ModelConfig
from teli.errors import TeliError
from teli.models import build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "teli"


def model(seed=0, arch="cnn", width=8):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, width=width), (1, 8, 8), 10)


def test_save_and_load_round_trip(tmp_path):
    a = model(0)
    path = tmp_path / "sub" / "m.safetensors"
    meta = {"kind": "teacher", "num_classes": 10, "input_shape": [1, 8, 8]}
    save_model(path, a, meta)
    assert path.is_file() and sidecar_path(path) == tmp_path / "sub" / "m.json"
    assert load_meta(path) == meta
    b = model(1)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    load_model_state(path, b)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k  # weights and BatchNorm buffers alike


def test_save_tensors_without_meta_writes_no_sidecar(tmp_path):
    path = tmp_path / "logits.safetensors"
    save_tensors(path, {"logits": torch.arange(6.0).view(2, 3)})
    assert not sidecar_path(path).exists()
    assert torch.equal(load_tensors(path)["logits"], torch.arange(6.0).view(2, 3))


def test_truncated_checkpoint_is_a_teli_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, model(), {"kind": "teacher"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TeliError, match="corrupt or truncated"):
        load_model_state(path, model())
    path.write_bytes(b"")
    with pytest.raises(TeliError, match="corrupt or truncated"):
        load_tensors(path)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(TeliError, match="corrupt or truncated"):
        load_tensors(path)


def test_missing_checkpoint_and_sidecar(tmp_path):
    with pytest.raises(TeliError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"w": torch.zeros(1)})
    with pytest.raises(TeliError, match="no sidecar"):
        load_meta(path)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(TeliError, match="not valid JSON"):
        load_meta(path)
    sidecar_path(path).write_text("[1, 2]")
    with pytest.raises(TeliError, match="JSON object"):
        load_meta(path)


def test_checkpoint_of_another_architecture_does_not_fit(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, model(width=8), {})
    with pytest.raises(TeliError, match="does not fit the model"):
        load_model_state(path, model(width=16))


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "file.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("teli.checkpoint.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_check_meta():
    expected = {"dataset": "digits", "num_classes": 10, "input_shape": (1, 8, 8)}
    check_meta(Path("t.safetensors"), {"dataset": "digits", "num_classes": 10, "input_shape": [1, 8, 8], "x": 1}, expected)
    with pytest.raises(TeliError, match="num_classes=7, but this run has num_classes=10"):
        check_meta(Path("t.safetensors"), {"dataset": "digits", "num_classes": 7, "input_shape": [1, 8, 8]}, expected)
    with pytest.raises(TeliError, match="input_shape"):
        check_meta(Path("t.safetensors"), {"dataset": "digits", "num_classes": 10, "input_shape": [3, 32, 32]}, expected)
    with pytest.raises(TeliError, match="dataset=None"):
        check_meta(Path("t.safetensors"), {"num_classes": 10, "input_shape": [1, 8, 8]}, expected)


def test_sidecar_is_plain_json(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, model(), {"arch": {"arch": "cnn"}, "test_accuracy": 0.5})
    assert json.loads(sidecar_path(path).read_text())["test_accuracy"] == 0.5


def test_no_unsafe_torch_load_in_the_package():
    offenders = []
    for file in SRC.rglob("*.py"):
        text = file.read_text()
        for match in re.finditer(r"torch\.load\s*\(", text):
            # the call's argument list up to its closing parenthesis (good enough for one call)
            depth, i = 1, match.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if not re.search(r"weights_only\s*=\s*True", text[match.end() : i]):
                offenders.append(f"{file.relative_to(SRC)}: {text[match.start() : i]}")
        if re.search(r"\bpickle\.loads?\(", text):
            offenders.append(f"{file.relative_to(SRC)}: pickle.load")
    assert SRC.is_dir() and any(SRC.rglob("checkpoint.py"))
    assert not offenders, offenders


def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    """A temporary file is created owner-only (0600); the final file must honour the umask like open() does."""
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
