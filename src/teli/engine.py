"""The one training loop that teachers, baselines and students all use.

An algorithm is a small object that owns the model it trains and, given a batch, returns its loss
and logs (USB's `train_step`). Everything else lives here once: the optimizer and its schedule,
EMA, gradient clipping, precision and devices (Lightning Fabric), a non-finite guard, periodic
evaluation, metrics and the progress bar. Checkpoints and resuming are teli.resume's: the loop only
asks it to restore state before the first step and offers it the state after each step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from lightning_fabric import Fabric
from torch import nn
from torch.optim.swa_utils import AveragedModel

from teli.config import OptimConfig
from teli.errors import TeliError
from teli.resume import StageCheckpoints, StopRequest, TrainState


@dataclass
class StepContext:
    step: int
    lr: float  # the learning rate of this step (the meta-gradient's virtual step uses it)
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward  # the engine passes Fabric's precision-aware one


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    backward_done: bool = False  # the algorithm already filled the model's .grad through ctx.backward


class Algorithm(Protocol):
    name: str
    model: nn.Module

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput: ...


@dataclass
class TrainResult:
    model: nn.Module  # the model to use: the EMA copy when EMA is on, else the trained one
    steps: int
    seconds: float
    last_logs: dict[str, float]


class MetricsLog:
    """Append-only JSON-lines metrics file (one JSON object per line)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file = open(path, "a") if path else None

    def write(self, record: dict) -> None:
        if self._file:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()


def setup_fabric(accelerator: str = "cpu", precision: str = "32-true", threads: int | None = None,
                 seed: int = 0, deterministic: bool = False) -> Fabric:
    if threads is None:
        threads = default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        fabric = Fabric(accelerator=accelerator, devices=1, precision=precision)
    except (ValueError, RuntimeError, TypeError) as err:
        raise TeliError(f"cannot set up accelerator={accelerator!r} precision={precision!r}: {err}".splitlines()[0]) from None
    return fabric


def default_threads() -> int:
    """One torch thread on <= 2 cores: on the 2-vCPU reference machine two threads gain 1.3-1.5x only
    when nothing else runs and lose 2-28x as soon as something does (benchmarks/threads.py); more
    cores get at most 8 so data work is not starved. `threads` in the config overrides it."""

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores <= 2 else min(8, cores)


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero over the remaining steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(total: int, label: str, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[status]}"), transient=True, disable=not (enabled and sys.stderr.isatty()))
    return progress, progress.add_task(label, total=total, status="")


def warmup_ema(decay: float):
    """EMA update with decay_t = min(decay, (1 + t) / (10 + t)), t = models averaged so far, as TensorFlow's
    ExponentialMovingAverage(num_updates) and timm's EMA warm-up do: torch's get_ema_multi_avg_fn has a
    fixed decay, whose average over a short run is dragged by the first, untrained weights (FixMatch with
    EMA 0.97 after 66 steps on Fashion-MNIST, 100 labels/class: 44 % with a fixed decay, 76 % with the warm-up)."""

    @torch.no_grad()
    def update(ema_tensors: list[torch.Tensor], tensors: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        for ema_t, t in zip(ema_tensors, tensors):
            if ema_t.is_floating_point():
                ema_t.lerp_(t, weight)
            else:
                ema_t.copy_(t)  # integer buffers (BatchNorm's step count): the current value

    return update


def train(algorithm: Algorithm, batches: Iterator[dict[str, torch.Tensor]], cfg: OptimConfig, *, fabric: Fabric,
          stage: str, log: MetricsLog | None = None, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          progress: bool = True, checkpoints: StageCheckpoints | None = None) -> TrainResult:
    """Train `algorithm.model` for `cfg.steps` steps on `batches`, continuing from `checkpoints` if they hold any."""
    log = log or MetricsLog(None)
    model = algorithm.model
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    bare_optimizer = optimizer
    model, optimizer = fabric.setup(model, optimizer)
    algorithm.model = model
    ema = AveragedModel(model.module, multi_avg_fn=warmup_ema(cfg.ema_decay), use_buffers=True) if cfg.ema_decay else None

    # The running log sums and skipped-step count live in `meter`, so that a checkpoint carries them.
    meter: dict = {"sums": {}, "counts": {}, "skipped": 0}
    state = TrainState(model.module, bare_optimizer, scheduler, ema, algorithm, batches,
                       getattr(fabric.strategy.precision, "scaler", None), meter)
    first = checkpoints.restore(state, cfg.steps) + 1 if checkpoints else 1
    if first > 1:
        log.write({"stage": stage, "resumed_from_step": first - 1})
    last_logs: dict[str, float] = {}
    start = time.perf_counter()
    bar, task = _progress(cfg.steps, stage, progress)
    with bar, StopRequest() as stop:
        bar.update(task, completed=first - 1)
        for step in range(first, cfg.steps + 1):
            batch = next(batches)
            model.train()
            ctx = StepContext(step=step, lr=scheduler.get_last_lr()[0], backward=fabric.backward)
            optimizer.zero_grad(set_to_none=True)
            with fabric.autocast():
                out = algorithm.train_step(batch, ctx)
            finite = bool(torch.isfinite(out.loss))
            if not finite and cfg.on_nonfinite == "stop":
                raise TeliError(nonfinite_message(stage, step, out, checkpoints))
            if finite:
                if not out.backward_done:
                    fabric.backward(out.loss)
                if cfg.grad_clip:
                    fabric.clip_gradients(model, optimizer, max_norm=cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model.module)
                accumulate(meter, {"loss": out.loss, **out.logs})
            else:
                meter["skipped"] += 1  # on_nonfinite=skip: no update from this step
            scheduler.step()

            if step % cfg.log_every == 0 or step == cfg.steps:
                last_logs = {k: round(float(v) / meter["counts"][k], 6) for k, v in meter["sums"].items()}
                skipped = {"skipped_steps": meter["skipped"]} if meter["skipped"] else {}
                log.write({"stage": stage, "step": step, "lr": ctx.lr, "seconds": round(time.perf_counter() - start, 3),
                           **last_logs, **skipped})
                bar.update(task, status=f"loss {last_logs['loss']:.3f}" if "loss" in last_logs else "skipped")
                meter["sums"], meter["counts"] = {}, {}
            if evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                scores = evaluate(ema.module if ema is not None else model.module)
                log.write({"stage": stage, "step": step, "eval": scores})
            if checkpoints is not None:
                checkpoints.after_step(step, cfg.steps, state, stop.requested)
            bar.advance(task)
    final = ema.module if ema is not None else model.module
    algorithm.model = model.module
    return TrainResult(model=final, steps=cfg.steps, seconds=time.perf_counter() - start, last_logs=last_logs)


def accumulate(meter: dict, logs: dict[str, torch.Tensor | float]) -> None:
    """Add a step's logs to the running sums, as tensors (converted, and so synchronised, only when
    written). A key may be absent in some steps (no disagreement in the batch): counts are per key."""
    for key, value in logs.items():
        meter["sums"][key] = meter["sums"].get(key, 0.0) + torch.as_tensor(value, dtype=torch.float32).detach()
        meter["counts"][key] = meter["counts"].get(key, 0) + 1


def nonfinite_message(stage: str, step: int, out: StepOutput, checkpoints: StageCheckpoints | None) -> str:
    bad = [k for k, v in out.logs.items() if isinstance(v, torch.Tensor) and not torch.isfinite(v).all()]
    found = checkpoints.latest() if checkpoints is not None else None
    kept = f"; the last good checkpoint (step {found[0]}) is kept in {found[1]}" if found else ""
    return (f"{stage}: the loss became {out.loss.item()} at step {step} (term: {', '.join(bad) or 'loss'}){kept}: "
            "lower the learning rate or enable grad_clip, or set optim.on_nonfinite=skip")


@torch.no_grad()
def predict_logits(model: nn.Module, x_uint8: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
                   batch_size: int = 1024) -> torch.Tensor:
    """Logits of `model` (in eval mode) for un-augmented images, in batches."""
    was_training = model.training
    model.eval()
    outs = [model(prepare(x_uint8[i : i + batch_size])).float() for i in range(0, len(x_uint8), batch_size)]
    model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)
