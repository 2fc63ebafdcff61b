"""Checkpoints that are safe to load and never half-written.

Weights go in safetensors (plain tensors: loading one cannot run code); what they are (architecture,
classes, input shape, dataset, accuracy) goes in a JSON sidecar beside them, checked before use.
Files are written to a temporary name, flushed to disk and renamed, so a crash leaves either the old
file or the new one. Training state that is not weights (optimizer, scheduler, RNG) is a torch file
read only with `torch.load(weights_only=True)`: plain containers and tensors, never arbitrary objects.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from teli.errors import TeliError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FAULT_SLEEP_ENV = "TELI_FAULT_SLEEP_IN_WRITE"  # test hook: seconds to pause between writing a file and renaming it


def _fault_pause(path: Path) -> None:
    seconds = float(os.environ.get(FAULT_SLEEP_ENV) or 0)
    if seconds > 0:  # benchmarks/fault_injection.py kills the process here
        print(f"teli-fault: pausing {seconds}s before renaming {path}", file=sys.stderr, flush=True)
        time.sleep(seconds)


def no_space_error(err: OSError, path: Path) -> TeliError | None:
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return TeliError(f"no space left on the device while writing {path}: free space, then continue with "
                         "`teli run --resume RUN` (the previous checkpoint is intact)")
    return None


def fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make renames in the folder durable
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the mode open() would
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _fault_pause(path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except OSError as err:
        raise (no_space_error(err, path) or err) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sidecar_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Write tensors to `path` (.safetensors) and, if given, `meta` to the JSON sidecar."""
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), save_safetensors_bytes(plain))
    if meta is not None:
        atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2))


def save_model(path: Path, model: nn.Module, meta: dict) -> None:
    save_tensors(path, model.state_dict(), meta)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise TeliError(f"checkpoint {path} not found: check the path or run folder")
    try:
        return load_safetensors_bytes(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise TeliError(f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0]}): "
                        "retrain it or restore it from a backup") from None


def load_meta(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise TeliError(f"checkpoint {path} has no sidecar {side.name}: it needs one saying its arch, classes and input shape")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError:
        raise TeliError(f"sidecar {side} is not valid JSON: restore it or retrain the model") from None
    if not isinstance(meta, dict):
        raise TeliError(f"sidecar {side} must hold a JSON object")
    return meta


def check_meta(path: Path, meta: dict, expected: dict) -> None:
    """Refuse a checkpoint whose sidecar disagrees with the data or model it is about to be used with."""
    for key, want in expected.items():
        have = meta.get(key)
        if isinstance(want, tuple):
            have = tuple(have) if isinstance(have, list) else have
        if have != want:
            raise TeliError(f"checkpoint {path} was made for {key}={have}, but this run has {key}={want}: "
                            "use a checkpoint trained on the same data, or change the run to match it")


def load_model_state(path: Path, model: nn.Module) -> None:
    state = load_tensors(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise TeliError(f"checkpoint {path} does not fit the model ({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}): "
                        "check the architecture in its sidecar") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def torch_state_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_torch_state(path: Path, data: bytes | None = None) -> dict:
    """A torch file of plain values and tensors, loaded with weights_only=True: one that holds any other
    object (a pickle that would run code) is refused, never executed."""
    path = Path(path)
    try:
        raw = path.read_bytes() if data is None else data
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TeliError(f"checkpoint {path} holds objects other than tensors and plain values: refused, since loading "
                        "it could run code (it was not written by teli)") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise TeliError(f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                        "delete that checkpoint folder to fall back to an older one, or restart with --overwrite") from None
    if not isinstance(state, dict):
        raise TeliError(f"checkpoint {path} does not hold a state dictionary: it was not written by teli")
    return state
