"""TELI's label logic as pure functions on tensors (no models, no state): unit-testable by hand.

Shapes: N teachers, B images, C classes. `logits` is [N, B, C].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PseudoLabels:
    probs: torch.Tensor  # [N, B, C] softmax(z / tau)
    preds: torch.Tensor  # [N, B] argmax per teacher
    confident: torch.Tensor  # [B] bool: every teacher's max prob >= threshold (all True when the mask is off)
    agree: torch.Tensor  # [B] bool: confident and all teachers predict the same class
    disagree: torch.Tensor  # [B] bool: confident and not all the same


def confidence_mask(probs: torch.Tensor, threshold: float, enabled: bool = True) -> torch.Tensor:
    """[B] True where every teacher's top probability reaches `threshold` (all True if disabled)."""
    if not enabled:
        return torch.ones(probs.shape[1], dtype=torch.bool, device=probs.device)
    return (probs.max(dim=-1).values >= threshold).all(dim=0)


def agreement_split(preds: torch.Tensor, confident: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split confident images into (agree, disagree) by whether all N teachers' labels are equal."""
    unanimous = (preds == preds[0:1]).all(dim=0)
    return confident & unanimous, confident & ~unanimous


def pseudo_labels(logits: torch.Tensor, temperature: float = 1.0, threshold: float = 0.6, use_mask: bool = True) -> PseudoLabels:
    probs = F.softmax(logits.float() / temperature, dim=-1)
    preds = probs.argmax(dim=-1)
    confident = confidence_mask(probs, threshold, use_mask)
    agree, disagree = agreement_split(preds, confident)
    return PseudoLabels(probs, preds, confident, agree, disagree)


def pair_weights(lam: torch.Tensor) -> torch.Tensor:
    """Two teachers: lambda [B] -> simplex weights [B, 2] = (lambda, 1 - lambda)."""
    return torch.stack([lam, 1 - lam], dim=-1)


def interpolated_targets(preds: torch.Tensor, weights: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft targets sum_i w_i * onehot(y_i): preds [N, B], weights [B, N] on the simplex -> [B, C].

    With two teachers and weights (lambda, 1 - lambda) this is lambda*y1 + (1 - lambda)*y2; teachers
    that name the same class add their weights on it.
    """
    onehots = F.one_hot(preds, num_classes).to(weights.dtype)  # [N, B, C]
    return torch.einsum("bn,nbc->bc", weights, onehots)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy against soft targets: [B, C] x [B, C] -> [B]."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values[mask]; 0 (still attached to the graph) when the mask is empty."""
    if mask.any():
        return values[mask].mean()
    return values.sum() * 0.0



def sample_weights(num_teachers: int, batch: int, mode: str, alpha: float, fixed: float, per: str,
                   rng: np.random.Generator) -> torch.Tensor:
    """Random or fixed simplex weights [B, N] over the teachers.

    fixed: (fixed, 1 - fixed) for 2 teachers, uniform for N > 2.  beta: lambda ~ Beta(alpha, alpha)
    for 2 (the first weight), Dirichlet(alpha, ..., alpha) for N; one draw per batch (the original)
    or one per image.
    """
    if mode == "fixed":
        w = [fixed, 1 - fixed] if num_teachers == 2 else [1 / num_teachers] * num_teachers
        return torch.tensor(w, dtype=torch.float32).expand(batch, num_teachers).clone()
    if mode != "beta":
        raise ValueError(f"sample_weights: mode must be 'fixed' or 'beta', not {mode!r}")
    draws = rng.dirichlet([alpha] * num_teachers, size=batch if per == "sample" else 1)
    return torch.from_numpy(draws).float().expand(batch, num_teachers).clone()


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-image KL(teacher || softmax(student / T)) * T^2, against an (already tempered) teacher distribution."""
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probs, reduction="none").sum(dim=-1) * temperature**2
