"""Algorithms: small plug-ins of the training engine (`train_step(batch, ctx) -> StepOutput`).

Each is built from the same things by `build_algorithm`: the student model, the cached teacher
logits on the unlabelled pool (None for methods that use no teachers), the run's config and a
seeded numpy generator. USES_UNLABELLED tells the pipeline whether to batch unlabelled images,
USES_STRONG whether the batch must also hold their strong view, USES_TEACHERS whether it needs teachers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from teli.algorithms.ensemble_kd import EnsembleKD
from teli.algorithms.fixmatch import FixMatch
from teli.algorithms.meta import MetaTeliStudent
from teli.algorithms.pseudo_label import PseudoLabel
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
    "pseudo-label": lambda model, logits, cfg, rng, data: PseudoLabel(model, logits, cfg),
    "ensemble-kd": lambda model, logits, cfg, rng, data: EnsembleKD(model, logits, cfg),
    "fixmatch": lambda model, logits, cfg, rng, data: FixMatch(model, cfg),
}
USES_UNLABELLED = {"teli", "pseudo-label", "ensemble-kd", "fixmatch"}
USES_TEACHERS = {"teli", "pseudo-label", "ensemble-kd"}
USES_STRONG = {"fixmatch"}  # always needs the strong view of the unlabelled images (others: data.strong_augment)


def check_algorithm(name: str) -> None:
    if name not in ALGORITHMS:
        raise TeliError(f"unknown algorithm '{name}': choose one of {', '.join(sorted(ALGORITHMS))}")


def build_algorithm(name: str, model: nn.Module, teacher_logits: torch.Tensor | None, cfg: RunConfig,
                    rng: np.random.Generator, data: SSLData) -> Algorithm:
    check_algorithm(name)
    if name in USES_TEACHERS and teacher_logits is None:
        raise TeliError(f"algorithm '{name}' needs the teachers' cached logits")
    return ALGORITHMS[name](model, teacher_logits, cfg, rng, data)


__all__ = ["ALGORITHMS", "EnsembleKD", "FixMatch", "MetaTeliStudent", "PseudoLabel", "USES_STRONG", "USES_TEACHERS",
           "USES_UNLABELLED", "Supervised", "TeliStudent", "build_algorithm", "check_algorithm"]
