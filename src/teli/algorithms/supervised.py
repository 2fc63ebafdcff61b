"""Supervised-only training on the labelled images: the teachers' stage and the baseline student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teli.engine import StepContext, StepOutput


class Supervised:
    name = "supervised"

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        self.model = model
        self.label_smoothing = label_smoothing

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        loss = F.cross_entropy(self.model(batch["x_l"]), batch["y_l"], label_smoothing=self.label_smoothing)
        return StepOutput(loss, {"loss_labelled": loss.detach()})
