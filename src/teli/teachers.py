"""Stage 1 and 2: train (or load) N diverse teachers on the labelled set; cache their logits on the pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning_fabric import Fabric
from torch import nn

from teli.algorithms import Supervised
from teli.checkpoint import check_meta, load_meta, load_model_state, save_model
from teli.config import ModelConfig, OptimConfig
from teli.data import SSLBatches, SSLData
from teli.engine import MetricsLog, predict_logits, train
from teli.errors import TeliError
from teli.models import build_model


@dataclass
class Teacher:
    spec: ModelConfig
    model: nn.Module
    path: Path | None = None


def data_signature(data: SSLData) -> dict:
    """What a checkpoint must agree on with the data it is used with."""
    return {"dataset": data.dataset, "num_classes": data.num_classes, "input_shape": data.input_shape}


def train_teacher(spec: ModelConfig, data: SSLData, optim: OptimConfig, *, fabric: Fabric, seed: int, stage: str,
                  log: MetricsLog | None = None, progress: bool = True, checkpoints=None) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec, data.input_shape, data.num_classes).to(fabric.device)
    batches = SSLBatches(data, min(optim.batch_size, len(data.x_l)), seed=seed)
    return train(Supervised(model), batches, optim, fabric=fabric, stage=stage, log=log, progress=progress,
                 checkpoints=checkpoints).model


def save_teacher(path: Path, teacher: Teacher, data: SSLData, test_accuracy: float) -> None:
    meta = {"kind": "teacher", "arch": teacher.spec.model_dump(), **data_signature(data), "test_accuracy": test_accuracy}
    save_model(path, teacher.model, meta)


def load_teacher(path: Path, data: SSLData, device: torch.device) -> Teacher:
    path = Path(path)
    meta = load_meta(path)
    check_meta(path, meta, data_signature(data))
    try:
        spec = ModelConfig.model_validate(meta.get("arch"))
    except ValueError:
        raise TeliError(f"sidecar of {path} has no valid 'arch' entry: it was not written by teli") from None
    model = build_model(spec, data.input_shape, data.num_classes)
    load_model_state(path, model)
    return Teacher(spec, model.to(device), path)


def teacher_files(run_dir: Path) -> list[Path]:
    files = sorted((Path(run_dir) / "teachers").glob("teacher_*.safetensors"))
    if not files:
        raise TeliError(f"no teachers in {run_dir}: expected {run_dir}/teachers/teacher_*.safetensors (made by `teli teachers`)")
    return files


@torch.no_grad()
def teacher_logits(teachers: list[nn.Module], data: SSLData) -> torch.Tensor:
    """[N, |U|, C] logits of the frozen teachers on the un-augmented pool: computed once per run."""
    return torch.stack([predict_logits(t, data.x_u, data.prepare) for t in teachers])
