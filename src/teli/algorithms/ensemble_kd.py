"""Ensemble-average soft distillation: the teachers' knowledge without TELI's hard labels, mask or lambda.

    L = CE(S(x_l), y_l) + w * mean over the unlabelled batch of KL(p_bar || softmax(z_S / T)) * T^2,
    p_bar = mean_i softmax(z_i / T)

(Hinton et al.'s distillation against the ensemble mean; T = `baselines.kd_temperature`, w =
`baselines.kd_weight`). p_bar is computed once from the cached teacher logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teli.algorithms.pseudo_label import split_forward
from teli.algorithms.teli import student_view
from teli.config import RunConfig
from teli.engine import StepContext, StepOutput
from teli.labels import kd_loss


def ensemble_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, B, C] teacher logits -> [B, C] mean of the teachers' tempered softmax."""
    return F.softmax(teacher_logits.float() / temperature, dim=-1).mean(dim=0)


class EnsembleKD:
    name = "ensemble-kd"

    def __init__(self, model: nn.Module, teacher_logits: torch.Tensor, cfg: RunConfig):
        self.model = model
        self.temperature = cfg.baselines.kd_temperature
        self.weight = cfg.baselines.kd_weight
        self.targets = ensemble_targets(teacher_logits, self.temperature)

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        logits_l, logits_u = split_forward(self.model, batch["x_l"], student_view(batch))
        loss_labelled = F.cross_entropy(logits_l, batch["y_l"])
        loss_kd = kd_loss(logits_u, self.targets[batch["idx_u"]], self.temperature).mean()
        logs = {"loss_labelled": loss_labelled.detach(), "loss_kd": loss_kd.detach()}
        return StepOutput(loss_labelled + self.weight * loss_kd, logs)
