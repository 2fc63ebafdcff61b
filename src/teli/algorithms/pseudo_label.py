"""Single-teacher pseudo-labelling (the original's `fit_baseline`): the comparison that asks whether
a second teacher, and interpolating where the two disagree, are worth anything.

    L = CE(S(x_l), y_l) + mean over the batch's confident images of CE(S(x_u), y_t)

with y_t = argmax softmax(z_t / tau) of ONE teacher t (`baselines.teacher`), confident where its top
probability reaches `teli.threshold` (the same threshold, temperature and mask switch as TELI). Like
TeliStudent, the labels come once from the cached teacher logits; a step only indexes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teli.algorithms.teli import student_view
from teli.config import RunConfig
from teli.engine import StepContext, StepOutput
from teli.errors import TeliError
from teli.labels import masked_mean, pseudo_labels


def split_forward(model: nn.Module, x_l: torch.Tensor, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over labelled and unlabelled images (BatchNorm sees both), split back."""
    logits = model(torch.cat([x_l, x_u]))
    return logits[: len(x_l)], logits[len(x_l) :]


class PseudoLabel:
    name = "pseudo-label"

    def __init__(self, model: nn.Module, teacher_logits: torch.Tensor, cfg: RunConfig):
        t = cfg.baselines.teacher
        if t >= len(teacher_logits):
            raise TeliError(f"baselines.teacher={t} but there are only {len(teacher_logits)} teachers (index from 0)")
        self.model = model
        # only teacher t's logits are ever read: labels[t:t+1] is a one-teacher ensemble
        labels = pseudo_labels(teacher_logits[t : t + 1], cfg.teli.temperature, cfg.teli.threshold, cfg.teli.use_mask)
        self.preds, self.confident = labels.preds[0], labels.confident

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        idx_u = batch["idx_u"]
        logits_l, logits_u = split_forward(self.model, batch["x_l"], student_view(batch))
        loss_labelled = F.cross_entropy(logits_l, batch["y_l"])
        mask = self.confident[idx_u]
        loss_pseudo = masked_mean(F.cross_entropy(logits_u, self.preds[idx_u], reduction="none"), mask)
        logs = {"loss_labelled": loss_labelled.detach(), "loss_pseudo": loss_pseudo.detach(), "frac_confident": mask.float().mean()}
        return StepOutput(loss_labelled + loss_pseudo, logs)
