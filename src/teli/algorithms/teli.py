"""TELI's student step: learn the teachers' agreed labels, and interpolated labels where they disagree.

    L_total = w_l * CE(S(x_l), y_l) + L_normal + gamma * L_mixup  (+ kd_weight * KD)
    L_normal = mean over agreeing images of CE(S(x), y_agreed)
    L_mixup  = mean over disagreeing images of CE(S(x), sum_i w_i * onehot(y_i))

The teachers are frozen and see un-augmented images, so their logits for the whole unlabelled pool
are computed once (teli.teachers) and the pseudo-labels, confidence mask and agree/disagree split
are derived once here; a step only indexes them. The weights w (lambda, 1 - lambda for two
teachers) come from `interpolation_weights`: fixed, Beta-sampled, or (teli.algorithms.meta)
predicted per image by a meta-learned head.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from teli.config import TeliConfig
from teli.engine import StepContext, StepOutput
from teli.labels import interpolated_targets, kd_loss, masked_mean, pseudo_labels, sample_weights, soft_cross_entropy


def student_view(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The student's unlabelled input: the strong view when data.strong_augment is on, else the weak one."""
    return batch.get("x_u_strong", batch["x_u"])


class TeliStudent:
    name = "teli"

    def __init__(self, model: nn.Module, teacher_logits: torch.Tensor, cfg: TeliConfig, rng: np.random.Generator):
        self.model = model
        self.cfg = cfg
        self.rng = rng
        self.num_teachers, _, self.num_classes = teacher_logits.shape
        self.teacher_logits = teacher_logits
        self.labels = pseudo_labels(teacher_logits, cfg.temperature, cfg.threshold, cfg.use_mask)
        if cfg.kd_weight > 0:  # the teachers' mean tempered distribution, for the optional KD term
            self.kd_targets = F.softmax(teacher_logits.float() / cfg.kd_temperature, dim=-1).mean(dim=0)

    def interpolation_weights(self, idx_u: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """[B, N] simplex weights over the teachers for the unlabelled images `idx_u`."""
        c = self.cfg
        w = sample_weights(self.num_teachers, len(idx_u), c.lambda_mode, c.alpha, c.lambda_value, c.lambda_per, self.rng)
        return w.to(idx_u.device)

    def unlabelled_losses(self, logits_u: torch.Tensor, idx_u: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unlabelled terms for a batch: L_normal on agreements, L_mixup on disagreements, KD."""
        preds = self.labels.preds[:, idx_u]
        agree, disagree = self.labels.agree[idx_u], self.labels.disagree[idx_u]
        terms = {
            "loss_normal": masked_mean(F.cross_entropy(logits_u, preds[0], reduction="none"), agree),
            "loss_mixup": masked_mean(soft_cross_entropy(logits_u, interpolated_targets(preds, weights, self.num_classes)), disagree),
        }
        if self.cfg.kd_weight > 0:
            terms["loss_kd"] = masked_mean(kd_loss(logits_u, self.kd_targets[idx_u], self.cfg.kd_temperature), agree | disagree)
        return terms

    def total_loss(self, loss_labelled: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        total = c.labelled_weight * loss_labelled + terms["loss_normal"] + c.gamma * terms["loss_mixup"]
        if "loss_kd" in terms:
            total = total + c.kd_weight * terms["loss_kd"]
        return total

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        x_l, y_l, idx_u = batch["x_l"], batch["y_l"], batch["idx_u"]
        x_u = student_view(batch)
        logits = self.model(torch.cat([x_l, x_u]))  # one forward: BatchNorm sees both halves together
        logits_l, logits_u = logits[: len(x_l)], logits[len(x_l) :]
        loss_labelled = F.cross_entropy(logits_l, y_l)
        weights = self.interpolation_weights(idx_u, ctx)
        terms = self.unlabelled_losses(logits_u, idx_u, weights)
        disagree = self.labels.disagree[idx_u]
        logs = {
            "loss_labelled": loss_labelled.detach(),
            **{k: v.detach() for k, v in terms.items()},
            "frac_agree": self.labels.agree[idx_u].float().mean(),
            "frac_disagree": disagree.float().mean(),
        }
        if disagree.any():
            logs["lambda_mean"] = weights[:, 0][disagree].mean().detach()
        return StepOutput(self.total_loss(loss_labelled, terms), logs)
