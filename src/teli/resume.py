"""Resumable training: complete checkpoints of a stage, written so that a crash never loses the last one.

A stage's checkpoints live in `RUN/checkpoints/STAGE/`:

    ckpt-000040/  weights.safetensors  model.*, ema.*, extra.NAME.* (the algorithm's extra_modules)
                  state.pt             optimizer, scheduler, AMP scaler, extra_optimizers, torch RNG,
                                       batch generators and queues (read with weights_only=True)
                  rng.json             python and numpy RNG states (numpy Generators of the batches too)
                  meta.json            step, stage, config, digests of config/data/cache, and the
                                       size and sha256 of each file above (written last)
    latest.json   {"step": 40, "folder": "ckpt-000040"}: switched atomically once the folder is complete

A checkpoint folder is built under a temporary name and renamed; only then does latest.json move
to it. A kill at any moment leaves latest.json naming a complete checkpoint (or none yet).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from teli.checkpoint import (atomic_write_bytes, atomic_write_text, fsync_dir, load_tensors, load_torch_state,
                             no_space_error, sha256_bytes, torch_state_bytes)
from teli.errors import TeliError
from teli.fingerprint import check_same_config

FORMAT = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT during training: a checkpoint was written, the CLI exits with status 130."""


@dataclass
class TrainState:
    """Everything a training step changes: what a checkpoint must hold for an exact continuation."""

    model: nn.Module  # the bare module (not Fabric's wrapper)
    optimizer: torch.optim.Optimizer  # the bare optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: nn.Module | None
    algorithm: object
    batches: object
    scaler: object | None = None  # torch.amp.GradScaler under 16-bit mixed precision
    meter: dict = field(default_factory=dict)  # the engine's running log sums and skipped-step count


# ---------------------------------------------------------------------------------------------
# Capture and restore


def _generators(batches) -> dict:
    """The batches' torch/numpy generators and index queues, found by attribute (one level deep)."""
    found = {}
    for name, value in sorted(vars(batches).items()):
        if isinstance(value, (torch.Generator, np.random.Generator)) or hasattr(value, "_order"):
            found[name] = value
    return found


def capture(state: TrainState) -> tuple[dict, dict, dict]:
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    if state.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
    for name, module in (getattr(state.algorithm, "extra_modules", None) or {}).items():
        tensors.update({f"extra.{name}.{k}": v for k, v in module.state_dict().items()})
    torch_state = {
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "extra_optimizers": {k: o.state_dict() for k, o in (getattr(state.algorithm, "extra_optimizers", None) or {}).items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {}, "queues": {}, "meter": state.meter,
    }
    rng = {"python": random.getstate(), "numpy": _legacy_numpy_state(), "generators": {}}
    for name, gen in _generators(state.batches).items():
        if isinstance(gen, torch.Generator):
            torch_state["generators"][name] = gen.get_state()
        elif isinstance(gen, np.random.Generator):
            rng["generators"][name] = gen.bit_generator.state
        else:
            torch_state["queues"][name] = gen._order.clone()
    return tensors, torch_state, rng


def _legacy_numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), pos, has_gauss, cached]


def restore(state: TrainState, tensors: dict, torch_state: dict, rng: dict) -> None:
    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    state.model.load_state_dict(part("model."))
    if state.ema is not None:
        state.ema.load_state_dict(part("ema."))
    for name, module in (getattr(state.algorithm, "extra_modules", None) or {}).items():
        module.load_state_dict(part(f"extra.{name}."))
    state.optimizer.load_state_dict(torch_state["optimizer"])
    state.scheduler.load_state_dict(torch_state["scheduler"])
    if state.scaler is not None and torch_state["scaler"] is not None:
        state.scaler.load_state_dict(torch_state["scaler"])
    for name, opt in (getattr(state.algorithm, "extra_optimizers", None) or {}).items():
        opt.load_state_dict(torch_state["extra_optimizers"][name])
    torch.set_rng_state(torch_state["torch_rng"])
    if torch_state["cuda_rng"]:
        torch.cuda.set_rng_state_all(torch_state["cuda_rng"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    for name, gen in _generators(state.batches).items():
        if isinstance(gen, torch.Generator):
            gen.set_state(torch_state["generators"][name])
        elif isinstance(gen, np.random.Generator):
            gen.bit_generator.state = rng["generators"][name]
        else:
            gen._order = torch_state["queues"][name]
    state.meter.clear()
    state.meter.update(torch_state["meter"])


# ---------------------------------------------------------------------------------------------
# A stage's checkpoint folder


class StageCheckpoints:
    """Save every `every` steps, at the stage's last step and on a stop request; keep the newest `keep`."""

    def __init__(self, folder: Path, stage: str, every: int, keep: int, fingerprint: dict, allow: list[str] | None = None):
        self.folder, self.stage, self.every, self.keep = Path(folder), stage, every, keep
        self.fingerprint = fingerprint  # {"config": tree, "data_digest": ..., "cache_digest": ...}
        self.allow = allow or []

    def latest(self) -> tuple[int, Path] | None:
        pointer = self.folder / "latest.json"
        if not pointer.is_file():
            return None
        try:
            info = json.loads(pointer.read_text())
            return int(info["step"]), self.folder / info["folder"]
        except (ValueError, KeyError, TypeError):
            raise TeliError(f"{pointer} is corrupt: delete it to restart stage {self.stage}, or restart with --overwrite") from None

    def after_step(self, step: int, total: int, state: TrainState, stop_requested: bool) -> None:
        if step == total or stop_requested or (self.every and step % self.every == 0):
            self.save(step, total, state)
        if stop_requested:
            raise Interrupted(f"stopped at step {step} of {self.stage}, checkpoint saved: continue with "
                              f"`teli run --resume {self.folder.parent.parent}`")

    def save(self, step: int, total: int, state: TrainState) -> Path:
        tensors, torch_state, rng = capture(state)
        files = {"weights.safetensors": save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}),
                 "state.pt": torch_state_bytes(torch_state), "rng.json": json.dumps(rng).encode()}
        meta = {"format": FORMAT, "stage": self.stage, "step": step, "total_steps": total, **self.fingerprint,
                "files": {name: {"bytes": len(data), "sha256": sha256_bytes(data)} for name, data in files.items()}}
        name = f"ckpt-{step:06d}"
        tmp = self.folder / f".{name}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for file, data in files.items():
                atomic_write_bytes(tmp / file, data)
            atomic_write_text(tmp / "meta.json", json.dumps(meta))
            final = self.folder / name
            if final.exists():  # left by a run killed after this rename but before the pointer moved
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(self.folder)
            atomic_write_text(self.folder / "latest.json", json.dumps({"step": step, "folder": name}))
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise (no_space_error(err, tmp) or err) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(step)
        return final

    def _prune(self, latest_step: int) -> None:
        """Drop half-written folders, folders newer than the pointer and all but the newest `keep`."""
        folders = sorted(self.folder.glob("ckpt-*"))
        kept = [f for f in folders if int(f.name[5:]) <= latest_step][-self.keep:]
        for f in folders:
            if f not in kept:
                shutil.rmtree(f, ignore_errors=True)
        for tmp in self.folder.glob(".ckpt-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
        for tmp in self.folder.glob(".latest.json.*.tmp"):  # a pointer write killed before its rename
            tmp.unlink(missing_ok=True)

    def restore(self, state: TrainState, total: int) -> int:
        """Load the latest checkpoint into `state`; return its step (0 when there is none)."""
        found = self.latest()
        if found is None:
            return 0
        step, folder = found
        meta = self._verified_meta(folder)
        self._check_fingerprint(meta, folder, total)
        tensors = load_tensors(folder / "weights.safetensors")
        torch_state = load_torch_state(folder / "state.pt")
        try:
            restore(state, tensors, torch_state, json.loads((folder / "rng.json").read_text()))
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise TeliError(f"checkpoint {folder} does not fit this stage ({str(err).splitlines()[0]}): "
                            "restart with --overwrite") from None
        self._prune(step)
        return step

    def _verified_meta(self, folder: Path) -> dict:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            files = meta["files"]
        except (OSError, ValueError, KeyError, TypeError):
            raise TeliError(f"checkpoint {folder} has no valid meta.json: delete that folder to fall back to an older "
                            "checkpoint, or restart with --overwrite") from None
        for name, want in files.items():
            path = folder / name
            data = path.read_bytes() if path.is_file() else b""
            if len(data) != want["bytes"] or sha256_bytes(data) != want["sha256"]:
                raise TeliError(f"checkpoint file {path} is truncated or corrupt ({len(data)} bytes, {want['bytes']} "
                                "expected): delete that folder to fall back to an older checkpoint, or restart with --overwrite")
        return meta

    def _check_fingerprint(self, meta: dict, folder: Path, total: int) -> None:
        if meta.get("format") != FORMAT or meta.get("stage") != self.stage or meta.get("total_steps") != total:
            raise TeliError(f"checkpoint {folder} was made for stage {meta.get('stage')} of {meta.get('total_steps')} steps "
                            f"(format {meta.get('format')}), not {self.stage} of {total}: restart with --overwrite")
        check_same_config(meta.get("config") or {}, self.fingerprint.get("config") or {}, self.allow, f"checkpoint {folder}")
        for key in ("data_digest", "cache_digest"):
            if meta.get(key) != self.fingerprint.get(key):
                what = "data" if key == "data_digest" else "teacher logits cache"
                raise TeliError(f"cannot resume: the {what} differs from the one checkpoint {folder} was made with "
                                f"({key}): restore the same data, or start a new run")


# ---------------------------------------------------------------------------------------------
# Stop requests


class StopRequest:
    """While active, SIGTERM/SIGINT only set `requested`: the engine checkpoints after the current step and
    stops. A second signal interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
