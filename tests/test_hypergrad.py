"""The lambda head's hypergradient against the true bilevel objective, and fast against exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from teli.algorithms.meta import MetaTeliStudent
from teli.config import ModelConfig, TeliConfig
from teli.hypergrad import rng_snapshot
from teli.models import build_model

LR = 0.1


def make_student(model: nn.Module, teacher_logits: torch.Tensor, method: str, dtype=torch.float32, gamma: float = 0.5):
    cfg = TeliConfig(lambda_mode="meta", meta_method=method, gamma=gamma, use_mask=False, meta_dropout=0.0,
                     meta_fd_eps=1e-6 if dtype == torch.float64 else 1e-3)
    student = MetaTeliStudent(model, teacher_logits, cfg, np.random.default_rng(0))
    student.head.to(dtype)
    return student


def bilevel_objective(model, student, batch, lr) -> torch.Tensor:
    """phi -> L_meta(theta - lr * grad_theta L_total(theta, phi)), written out independently of teli."""
    params = {k: p.detach().requires_grad_(True) for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    idx = batch["idx_u"]
    preds = student.labels.preds[:, idx]
    agree, disagree = student.labels.agree[idx], student.labels.disagree[idx]
    lam = torch.sigmoid(student.head.net(student.teacher_logits[:, idx[disagree]].permute(1, 0, 2).flatten(1).to(
        student.head.net[1].weight.dtype)))[:, 0]
    logits = functional_call(model, {**params, **buffers}, (torch.cat([batch["x_l"], batch["x_u"]]),))
    logits_l, logits_u = logits[: len(batch["x_l"])], logits[len(batch["x_l"]) :]
    ce1 = F.cross_entropy(logits_u[disagree], preds[0, disagree], reduction="none")
    ce2 = F.cross_entropy(logits_u[disagree], preds[1, disagree], reduction="none")
    total = (F.cross_entropy(logits_l, batch["y_l"]) + F.cross_entropy(logits_u[agree], preds[0, agree]) * agree.any()
             + student.cfg.gamma * (lam * ce1 + (1 - lam) * ce2).mean())
    grads = torch.autograd.grad(total, list(params.values()))
    virtual = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
    return F.cross_entropy(functional_call(model, {**virtual, **buffers}, (batch["x_l"],)), batch["y_l"])


def head_grad(student, batch, lr):
    """The algorithm's own hypergradient, after the real step's backward as in train_step."""
    net = student.model
    net.zero_grad()
    disagree = student.labels.disagree[batch["idx_u"]]
    weights_d = student.head(student.teacher_logits[:, batch["idx_u"][disagree]])
    rng = rng_snapshot(batch["x_l"].device)
    logits, total, _, _ = student.losses(batch, weights_d.detach(), net)
    total.backward()
    grads, _ = student.head_grads(batch, weights_d, logits, rng, lr)
    return torch.cat([g.flatten() for g in grads])


def tiny_problem(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    teacher_logits = torch.randn(2, 20, 3, dtype=dtype) * 2
    batch = {"x_l": torch.randn(8, 4, dtype=dtype), "y_l": torch.randint(0, 3, (8,)),
             "x_u": torch.randn(20, 4, dtype=dtype), "idx_u": torch.arange(20)}
    return model, teacher_logits, batch


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_hypergradient_matches_finite_difference_of_the_bilevel_objective(method):
    model, teacher_logits, batch = tiny_problem()
    student = make_student(model, teacher_logits, method, torch.float64)
    assert student.labels.disagree.sum() >= 3, "the problem must have disagreements"
    analytic = head_grad(student, batch, LR)

    head_params = list(student.head.parameters())
    flat = torch.cat([p.detach().flatten() for p in head_params])
    direction = torch.randn(flat.shape, generator=torch.Generator().manual_seed(1), dtype=flat.dtype)
    direction /= direction.norm()

    def objective_at(vector):
        torch.nn.utils.vector_to_parameters(vector, head_params)
        return bilevel_objective(model, student, batch, LR).item()

    eps = 1e-5
    numeric = (objective_at(flat + eps * direction) - objective_at(flat - eps * direction)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, head_params)
    predicted = float(analytic @ direction)
    assert abs(numeric) > 1e-8, "degenerate check: the objective does not depend on the head"
    assert abs(predicted - numeric) / abs(numeric) < 1e-3, (predicted, numeric)


def small_cnn_problem():
    """A small BatchNorm CNN on digit-sized inputs, and a fast and an exact student sharing one head."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", width=16, depth=2), (1, 8, 8), 10)
    teacher_logits = torch.randn(2, 64, 10) * 3
    batch = {"x_l": torch.randn(32, 1, 8, 8), "y_l": torch.randint(0, 10, (32,)),
             "x_u": torch.randn(64, 1, 8, 8), "idx_u": torch.arange(64)}
    fast = make_student(model, teacher_logits, "fast")
    exact = make_student(model, teacher_logits, "exact")
    exact.head.load_state_dict(fast.head.state_dict())
    return model, fast, exact, batch


def test_fast_and_exact_agree_on_the_small_cnn_with_batchnorm():
    model, fast, exact, batch = small_cnn_problem()
    running = {k: v.clone() for k, v in model.state_dict().items()}
    g_fast, g_exact = head_grad(fast, batch, LR), head_grad(exact, batch, LR)
    cosine = F.cosine_similarity(g_fast, g_exact, dim=0).item()
    assert cosine > 0.99, cosine
    # the hypergradient's real forwards update BN statistics only through the real step (one forward each)
    assert any(not torch.equal(running[k], v) for k, v in model.state_dict().items() if "running" in k)


def test_head_receives_a_nonzero_meta_gradient_and_moves():
    """Regression for the original code's fault: its meta step never reached the lambda head."""
    model, teacher_logits, batch = tiny_problem(torch.float32)
    student = make_student(model, teacher_logits, "fast")
    before = [p.detach().clone() for p in student.head.parameters()]
    grad = head_grad(student, batch, LR)
    assert grad.abs().sum() > 0
    from teli.engine import StepContext

    student.model.zero_grad()
    student.train_step(batch, StepContext(step=1, lr=LR, backward=lambda loss: loss.backward()))
    assert any(not torch.equal(b, p) for b, p in zip(before, student.head.parameters()))


def test_fast_form_under_bf16_autocast_still_follows_the_exact_hypergradient():
    """Mixed precision cannot resolve the finite difference against the real (bf16) forward, so the
    fast form switches to a float32 central difference; it must still point where the exact one does."""
    model, fast, exact, batch = small_cnn_problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_fast = head_grad(fast, batch, LR)
    g_exact = head_grad(exact, batch, LR)
    assert F.cosine_similarity(g_fast.float(), g_exact, dim=0).item() > 0.95
