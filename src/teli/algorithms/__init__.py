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

from teli.algorithms.supervised import Supervised
from teli.algorithms.teli import TeliStudent
from teli.config import RunConfig
from teli.engine import Algorithm
from teli.errors import TeliError

Builder = Callable[[nn.Module, "torch.Tensor | None", RunConfig, np.random.Generator], Algorithm]

ALGORITHMS: dict[str, Builder] = {
    "teli": lambda model, logits, cfg, rng: TeliStudent(model, logits, cfg.teli, rng),
    "supervised": lambda model, logits, cfg, rng: Supervised(model),
}
USES_UNLABELLED = {"teli"}
USES_TEACHERS = {"teli"}


def check_algorithm(name: str) -> None:
    if name not in ALGORITHMS:
        raise TeliError(f"unknown algorithm '{name}': choose one of {', '.join(sorted(ALGORITHMS))}")


def build_algorithm(name: str, model: nn.Module, teacher_logits: torch.Tensor | None, cfg: RunConfig,
                    rng: np.random.Generator) -> Algorithm:
    check_algorithm(name)
    return ALGORITHMS[name](model, teacher_logits, cfg, rng)


__all__ = ["ALGORITHMS", "USES_TEACHERS", "USES_UNLABELLED", "Supervised", "TeliStudent", "build_algorithm", "check_algorithm"]
