"""Algorithms: small plug-ins of the training engine (`train_step(batch, ctx) -> StepOutput`).

Each is built from the same things by `build_algorithm`: the student model, the cached teacher
logits on the unlabelled pool (None for methods that use no teachers), the run's config and a
seeded numpy generator. `uses_unlabelled` tells the pipeline whether to batch unlabelled images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from teli.algorithms.meta import MetaTeliStudent
from teli.algorithms.supervised import Supervised
from teli.algorithms.teli import TeliStudent
from teli.config import RunConfig
from teli.data import SSLData
from teli.engine import Algorithm
from teli.errors import TeliError

Builder = Callable[[nn.Module, "torch.Tensor | None", RunConfig, np.random.Generator, SSLData], Algorithm]


def build_teli(model: nn.Module, logits: torch.Tensor, cfg: RunConfig, rng: np.random.Generator, data: SSLData) -> Algorithm:
    if cfg.teli.lambda_mode != "meta":
        return TeliStudent(model, logits, cfg.teli, rng)
    meta_set = None
    if cfg.teli.meta_source == "val":
        if len(data.x_val) == 0:
            raise TeliError("teli.meta_source=val needs held-out labelled images: set data.val_per_class > 0")
        meta_set = (data.prepare(data.x_val), data.y_val)
    return MetaTeliStudent(model, logits, cfg.teli, rng, meta_set)


ALGORITHMS: dict[str, Builder] = {
    "teli": build_teli,
    "supervised": lambda model, logits, cfg, rng, data: Supervised(model),
}
USES_UNLABELLED = {"teli"}
USES_TEACHERS = {"teli"}


def check_algorithm(name: str) -> None:
    if name not in ALGORITHMS:
        raise TeliError(f"unknown algorithm '{name}': choose one of {', '.join(sorted(ALGORITHMS))}")


def build_algorithm(name: str, model: nn.Module, teacher_logits: torch.Tensor | None, cfg: RunConfig,
                    rng: np.random.Generator, data: SSLData) -> Algorithm:
    check_algorithm(name)
    return ALGORITHMS[name](model, teacher_logits, cfg, rng, data)


__all__ = ["ALGORITHMS", "MetaTeliStudent", "USES_TEACHERS", "USES_UNLABELLED", "Supervised", "TeliStudent", "build_algorithm", "check_algorithm"]
