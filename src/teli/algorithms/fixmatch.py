"""FixMatch (Sohn et al., 2020): the student is its own teacher; no trained teachers at all.

    L = CE(S(x_l), y_l) + lambda_u * (1 / (mu B)) * sum_b 1[max q_b >= tau] * CE(S(A_strong(u_b)), argmax q_b)
    q_b = softmax(S(A_weak(u_b))), taken without gradient

The pseudo-label comes from the weakly augmented view (`x_u`), the loss is on the strongly augmented
view of the same image (`x_u_strong`, so the pipeline builds strong batches: USES_STRONG); the mean
is over the whole unlabelled batch (masked images count as zero), as in the paper. tau =
`baselines.fixmatch_threshold` (0.95), lambda_u = `baselines.fixmatch_weight` (1), mu B =
`student.unlabelled_batch_size`. The evaluated model is an EMA of the student: the pipeline turns
on the engine's EMA (`baselines.fixmatch_ema`) when `student.optim.ema_decay` is unset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teli.config import RunConfig
from teli.engine import StepContext, StepOutput
from teli.errors import TeliError


def fixmatch_unlabelled_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask, pseudo-labels): masked CE of the strong view against the weak view's argmax.
    No gradient reaches `logits_weak`: the pseudo-label is a constant target."""
    probs = F.softmax(logits_weak.detach().float(), dim=-1)
    confidence, labels = probs.max(dim=-1)
    mask = confidence >= threshold
    loss = (F.cross_entropy(logits_strong, labels, reduction="none") * mask).mean()
    return loss, mask, labels


class FixMatch:
    name = "fixmatch"

    def __init__(self, model: nn.Module, cfg: RunConfig):
        self.model = model
        self.threshold = cfg.baselines.fixmatch_threshold
        self.weight = cfg.baselines.fixmatch_weight

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        if "x_u_strong" not in batch:
            raise TeliError("fixmatch needs strongly augmented unlabelled images: build SSLBatches(..., strong=True)")
        x_l, x_w, x_s = batch["x_l"], batch["x_u"], batch["x_u_strong"]
        logits = self.model(torch.cat([x_l, x_w, x_s]))  # one forward, as in the reference implementation
        n_l, n_u = len(x_l), len(x_w)
        logits_l, logits_w, logits_s = logits[:n_l], logits[n_l : n_l + n_u], logits[n_l + n_u :]
        loss_labelled = F.cross_entropy(logits_l, batch["y_l"])
        loss_u, mask, _ = fixmatch_unlabelled_loss(logits_w, logits_s, self.threshold)
        logs = {"loss_labelled": loss_labelled.detach(), "loss_unlabelled": loss_u.detach(), "frac_confident": mask.float().mean()}
        return StepOutput(loss_labelled + self.weight * loss_u, logs)
