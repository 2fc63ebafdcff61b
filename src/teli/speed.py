"""Step timing shared by `teli bench --suite speed`, the bench's equal-time calibration and benchmarks/.

Kinds of step run interleaved in one process (round-robin blocks of steps, median of the blocks), so
machine noise hits them alike; only ratios are meaningful on a shared machine. Each step is timed in
two parts: the data (the next batch: indexing, augmentation) and the whole step (data + forward, loss,
backward, optimizer and EMA update), as the engine runs it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from teli.algorithms import USES_TEACHERS, build_algorithm
from teli.checkpoint import atomic_write_text, load_tensors
from teli.config import RunConfig, build_config
from teli.data import SSLData
from teli.engine import StepContext, StepOutput, make_optimizer, setup_fabric
from teli.models import build_model

Stepper = Callable[[], tuple[float, float]]  # one training step -> (data seconds, whole-step seconds)


class PlainSupervised:
    """A plain supervised step on the labelled AND unlabelled batch (B + mu B images, one forward, CE):
    the cost TELI's step is measured against. The unlabelled images' hidden labels serve only as
    targets of equal cost (this is a timing device, never a way to train)."""

    name = "plain-supervised"

    def __init__(self, model, data: SSLData):
        self.model, self.data = model, data

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        hidden = self.data.y_u_hidden
        y_u = hidden[batch["idx_u"]] if hidden is not None else torch.zeros_like(batch["idx_u"])
        loss = F.cross_entropy(self.model(torch.cat([batch["x_l"], batch["x_u"]])), torch.cat([batch["y_l"], y_u]))
        return StepOutput(loss, {})


def make_stepper(cfg: RunConfig, data: SSLData, logits: torch.Tensor | None, plain: bool = False, seed: int = 0) -> Stepper:
    """A training step of `cfg.algorithm` on `cfg`'s student, batches, optimizer and EMA (plain=True: PlainSupervised
    on the same batches as cfg.algorithm's)."""
    from teli.pipeline import student_batches, student_optim

    torch.manual_seed(seed)
    model = build_model(cfg.student.model, data.input_shape, data.num_classes).to(data.x_l.device)
    batches = student_batches(cfg, data, seed)
    if plain:
        algorithm = PlainSupervised(model, data)
    else:
        algorithm = build_algorithm(cfg.algorithm, model, logits if cfg.algorithm in USES_TEACHERS else None, cfg, batches.rng, data)
    optim = student_optim(cfg)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], optim)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(optim.ema_decay), use_buffers=True) if optim.ema_decay else None
    count = iter(range(1, 10**9))

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        out = algorithm.train_step(batch, StepContext(next(count), optim.lr, lambda loss: loss.backward()))
        if not out.backward_done:
            out.loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        return t1 - t0, time.perf_counter() - t0

    return step


def interleaved(steppers: dict[str, Stepper], steps: int, repeats: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Per kind: median over `repeats` round-robin blocks of the mean data and whole-step seconds per step."""
    for step in steppers.values():
        for _ in range(warmup):
            step()
    blocks: dict[str, list[tuple[float, float]]] = {k: [] for k in steppers}
    for _ in range(repeats):
        for name, step in steppers.items():
            parts = [step() for _ in range(steps)]
            blocks[name].append((sum(p[0] for p in parts) / steps, sum(p[1] for p in parts) / steps))
    return {k: {"data": statistics.median(b[0] for b in v), "step": statistics.median(b[1] for b in v)} for k, v in blocks.items()}


def step_times(cfgs: dict[str, RunConfig], data: SSLData, logits: torch.Tensor | None, steps: int = 5, repeats: int = 3) -> dict[str, float]:
    """Median seconds per step of each config's algorithm, measured interleaved."""
    return {k: v["step"] for k, v in interleaved({k: make_stepper(c, data, logits) for k, c in cfgs.items()}, steps, repeats).items()}


def load_teachers_run(run_dir: Path) -> tuple[SSLData, torch.Tensor]:
    """The data split and cached teacher logits of a finished teachers run folder."""
    from teli.pipeline import config_of, prepare_data

    cfg = config_of(run_dir)
    fabric = setup_fabric(cfg.accelerator, cfg.precision, cfg.threads, cfg.seed)
    data = prepare_data(cfg, fabric.device)
    return data, load_tensors(Path(run_dir) / "teacher_logits.safetensors")["logits"].to(fabric.device)


def run_speed_suite(out: Path, base_overrides: dict | None = None, steps: int = 15, repeats: int = 5) -> dict:
    """The speed suite on the digits default student: step-time ratios (interleaved), the data pipeline's
    share of a TELI step, and the wall time of a default `teli run`. Writes OUT/speed/results.{json,md}."""
    from teli import pipeline
    from teli.teachers import teacher_logits, train_teacher

    root = Path(out) / "speed"
    root.mkdir(parents=True, exist_ok=True)
    cfg = build_config(overrides={**(base_overrides or {}), "progress": False})
    fabric = setup_fabric(cfg.accelerator, cfg.precision, cfg.threads, cfg.seed)
    data = pipeline.prepare_data(cfg, fabric.device)
    teachers = [train_teacher(spec, data, cfg.teachers.optim, fabric=fabric, seed=i + 1, stage=f"teacher{i + 1}", progress=False)
                for i, spec in enumerate(cfg.teachers.models)]
    logits = teacher_logits(teachers, data)

    def variant(**over) -> RunConfig:
        return build_config(cfg.model_dump(), over)

    beta = variant(**{"algorithm": "teli", "teli.lambda_mode": "beta"})
    steppers = {
        "plain supervised (B + mu B images)": make_stepper(beta, data, logits, plain=True),
        "TELI-beta": make_stepper(beta, data, logits),
        "TELI-meta": make_stepper(variant(**{"algorithm": "teli", "teli.lambda_mode": "meta"}), data, logits),
        "TELI-beta, strong augmentation": make_stepper(variant(**{"algorithm": "teli", "data.strong_augment": True}), data, logits),
        "pseudo-label": make_stepper(variant(algorithm="pseudo-label"), data, logits),
        "ensemble-kd": make_stepper(variant(algorithm="ensemble-kd"), data, logits),
        "fixmatch": make_stepper(variant(algorithm="fixmatch"), data, logits),
    }
    times = interleaved(steppers, steps, repeats)
    plain, b, m = times["plain supervised (B + mu B images)"]["step"], times["TELI-beta"]["step"], times["TELI-meta"]["step"]
    strong = times["TELI-beta, strong augmentation"]
    run_cfg = variant(out_dir=str(root / "runs"), name="default-run")
    summary = pipeline.run(run_cfg, overwrite=True)
    results = {
        "suite": "speed", "threads": torch.get_num_threads(), "steps_per_block": steps, "repeats": repeats,
        "student": pipeline.describe_arch(cfg.student.model), "batch": cfg.student.optim.batch_size,
        "unlabelled_batch": cfg.student.unlabelled_batch_size,
        "ms_per_step": {k: round(1000 * v["step"], 2) for k, v in times.items()},
        "data_ms_per_step": {k: round(1000 * v["data"], 2) for k, v in times.items()},
        "ratios": {"TELI-beta / plain supervised": b / plain, "TELI-meta / TELI-beta": m / b,
                   "data share of a TELI-beta step": times["TELI-beta"]["data"] / b,
                   "data share of a TELI-beta step with strong augmentation": strong["data"] / strong["step"]},
        "goals": {"TELI-beta / plain supervised": 1.05, "TELI-meta / TELI-beta": 1.35, "data share of a TELI-beta step": 0.10,
                  "data share of a TELI-beta step with strong augmentation": 0.10},
        "teli_run_wall_seconds": summary["wall_seconds"],
    }
    atomic_write_text(root / "results.json", json.dumps(results, indent=2))
    atomic_write_text(root / "results.md", speed_table(results))
    return results


def speed_table(r: dict) -> str:
    lines = [f"Speed suite: digits default student {r['student']}, batch {r['batch']} labelled + {r['unlabelled_batch']} "
             f"unlabelled, {r['threads']} torch thread(s); {r['repeats']} interleaved blocks of {r['steps_per_block']} steps "
             "per kind, medians (only ratios are meaningful on a shared machine).", "",
             "| measure | value | goal | met |", "|---|---|---|---|"]
    for name, value in r["ratios"].items():
        goal = r["goals"].get(name)
        share = name.startswith("data share")
        shown = f"{100 * value:.1f} %" if share else f"{value:.3f}"
        goal_text = "" if goal is None else (f"< {100 * goal:.0f} %" if share else f"≤ {goal}")
        lines.append(f"| {name} | {shown} | {goal_text} | {'' if goal is None else ('yes' if value <= goal else 'no')} |")
    w = r["teli_run_wall_seconds"]
    lines.append(f"| `teli run` wall time (default, progress off) | {w['total']:.1f} s | | |")
    lines += ["", "`teli run` stages (s): " + ", ".join(f"{k} {v}" for k, v in w.items() if k != "total"), "",
              "| step kind | ms/step | of which data (ms) |", "|---|---|---|"]
    for name, ms in r["ms_per_step"].items():
        lines.append(f"| {name} | {ms:.1f} | {r['data_ms_per_step'][name]:.1f} |")
    return "\n".join(lines) + "\n"
