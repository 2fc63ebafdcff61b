"""Shared by the resume and checkpoint-safety tests: a tiny deterministic run, and a toy training loop."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from teli.config import OptimConfig, build_config
from teli.data import SSLBatches, SSLData
from teli.engine import StepOutput, setup_fabric, train
from teli.resume import StageCheckpoints


class Stop(Exception):
    """Raised by the test hook that 'crashes' a run after a given step of a given stage."""


def tiny_config(out: Path, name: str, **extra):
    overrides = {"teachers.optim.steps": 20, "student.optim.steps": 30, "student.unlabelled_batch_size": 32,
                 "teli.threshold": 0.0, "teli.lambda_per": "sample",
                 "deterministic": True, "checkpoint.every": 10, "progress": False, "threads": 1,
                 "out_dir": str(out), "name": name, **extra}
    return build_config({}, overrides)


def crash_after(monkeypatch, stage: str, step: int, exc=Stop) -> None:
    """Make training raise `exc` right after `step` of `stage` (once the engine offered it for checkpointing)."""
    original = StageCheckpoints.after_step

    def hooked(self, s, total, state, stop_requested):
        original(self, s, total, state, stop_requested)
        if self.stage == stage and s == step:
            monkeypatch.setattr(StageCheckpoints, "after_step", original)  # crash once
            raise exc(f"test crash after step {step} of {stage}")

    monkeypatch.setattr(StageCheckpoints, "after_step", hooked)


def accuracies(summary: dict) -> list[tuple[str, float]]:
    return [(m["name"], m["accuracy"]) for m in summary["models"]]


def latest_step(run_dir: Path, stage: str) -> int:
    return json.loads((Path(run_dir) / "checkpoints" / stage / "latest.json").read_text())["step"]


# ---------------------------------------------------------------------------------------------
# A toy stage: a linear model on random 8x8 images, fast enough to train in milliseconds


def toy_data(n: int = 24) -> SSLData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 3
    empty_x, empty_y = x[:0], y[:0]
    return SSLData("toy", x, y, empty_x, empty_y, x, y, x, y, 3, torch.tensor([0.5]), torch.tensor([0.25]), False)


class ToyAlgorithm:
    name = "toy"

    def __init__(self, model: nn.Module, nan_at: set[int] = frozenset(), extra: bool = False):
        self.model, self.nan_at = model, nan_at
        if extra:  # trainable state of its own, as the meta-learned lambda head has
            self.head = nn.Linear(3, 1)
            self.extra_modules = {"head": self.head}
            self.extra_optimizers = {"head": torch.optim.Adam(self.head.parameters(), lr=0.01)}

    def train_step(self, batch, ctx):
        logits = self.model(batch["x_l"])
        loss = F.cross_entropy(logits, batch["y_l"])
        if hasattr(self, "head"):  # the head learns on its own; its output scales the model's loss
            head_out = self.head(logits.detach()).sigmoid().mean()
            self.extra_optimizers["head"].zero_grad()
            (head_out - 0.9).pow(2).backward()
            self.extra_optimizers["head"].step()
            loss = loss * (1 + head_out.detach())
        bad = loss * float("nan") if ctx.step in self.nan_at else loss
        return StepOutput(bad, {"loss_labelled": loss.detach(), "loss_bad": bad.detach()})


def toy_train(folder: Path | None, steps: int = 12, every: int = 5, nan_at=frozenset(), extra: bool = False, **optim):
    """Train the toy stage; returns (result, checkpoints)."""
    fabric = setup_fabric("cpu", threads=1, seed=0, deterministic=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    batches = SSLBatches(toy_data(), 8, seed=0)
    ckpt = StageCheckpoints(folder, "toy", every, 2, {"config": {"a": 1}, "data_digest": "d", "cache_digest": None}) if folder else None
    cfg = OptimConfig(steps=steps, batch_size=8, lr=0.05, **optim)
    algorithm = ToyAlgorithm(model, set(nan_at), extra)
    result = train(algorithm, batches, cfg, fabric=fabric, stage="toy", progress=False, checkpoints=ckpt)
    result.algorithm = algorithm
    return result, ckpt
