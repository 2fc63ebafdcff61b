"""Frozen teachers run once over the pool; the TELI step only indexes their cached outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from teli.algorithms import TeliStudent
from teli.config import ModelConfig, OptimConfig, TeliConfig
from teli.data import SSLBatches
from teli.engine import StepContext, setup_fabric, train
from teli.models import build_model
from teli.teachers import teacher_logits


class CallCounter:
    def __init__(self, module: nn.Module):
        self.calls = 0
        self.images = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1
        self.images += len(inputs[0])


def test_teachers_run_once_over_the_pool_never_during_training(ssl_data):
    torch.manual_seed(0)
    teachers = [build_model(ModelConfig(arch="cnn", width=8), ssl_data.input_shape, 10),
                build_model(ModelConfig(arch="mlp", width=32), ssl_data.input_shape, 10)]
    counters = [CallCounter(t) for t in teachers]
    for t in teachers:
        t.eval().requires_grad_(False)

    logits = teacher_logits(teachers, ssl_data)
    n_u = len(ssl_data.x_u)
    assert logits.shape == (2, n_u, 10)
    assert [c.images for c in counters] == [n_u, n_u]  # every pool image exactly once per teacher
    assert all(c.calls >= 1 for c in counters)
    # the cache is the teachers' output on the *un-augmented* pool
    torch.testing.assert_close(logits[1, :50], teachers[1](ssl_data.prepare(ssl_data.x_u[:50])))
    calls_after_cache = [c.calls for c in counters]

    student = build_model(ModelConfig(arch="cnn", width=8), ssl_data.input_shape, 10)
    batches = SSLBatches(ssl_data, 16, 64, seed=0)
    cfg = TeliConfig(threshold=0.0, gamma=0.5)  # everything confident: both loss terms active
    algo = TeliStudent(student, logits, cfg, batches.rng)
    result = train(algo, batches, OptimConfig(steps=6, batch_size=16, lr=0.05, log_every=3), fabric=setup_fabric(threads=1),
                   stage="teli", progress=False)
    assert [c.calls for c in counters] == calls_after_cache
    assert math.isfinite(result.last_logs["loss"]) and "loss_normal" in result.last_logs


# ---------------------------------------------------------------------------------------------
# The loss terms by hand


class Passthrough(nn.Module):
    """A 'student' whose logits are its inputs (an identity linear layer)."""

    def __init__(self, c: int):
        super().__init__()
        self.linear = nn.Linear(c, c)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(c))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


# Four pool images, three classes, two teachers (logits chosen so softmax max is clear):
#   0: both say 0 with confidence       -> agree
#   1: T1 says 1, T2 says 2, confident   -> disagree
#   2: T1 says 0 with low confidence     -> neither (masked out)
#   3: T1 says 2, T2 says 0, confident   -> disagree
T_LOGITS = torch.tensor([
    [[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 6.0]],
    [[6.0, 0.0, 0.0], [0.0, 0.0, 6.0], [6.0, 0.0, 0.0], [6.0, 0.0, 0.0]],
])


def ce(logits: list[float], y: int) -> float:
    return -(logits[y] - math.log(sum(math.exp(v) for v in logits)))


def test_teli_masks_from_cached_logits():
    algo = TeliStudent(Passthrough(3), T_LOGITS, TeliConfig(threshold=0.6), np.random.default_rng(0))
    assert algo.labels.agree.tolist() == [True, False, False, False]
    assert algo.labels.disagree.tolist() == [False, True, False, True]
    assert algo.labels.preds.tolist() == [[0, 1, 0, 2], [0, 2, 0, 0]]
    off = TeliStudent(Passthrough(3), T_LOGITS, TeliConfig(threshold=0.6, use_mask=False), np.random.default_rng(0))
    assert off.labels.agree.tolist() == [True, False, True, False]


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_teli_step_loss_equals_hand_computation(gamma):
    cfg = TeliConfig(threshold=0.6, gamma=gamma, labelled_weight=2.0, lambda_mode="fixed", lambda_value=0.25)
    algo = TeliStudent(Passthrough(3), T_LOGITS, cfg, np.random.default_rng(0))
    x_l = [[1.0, 0.0, -1.0], [0.0, 0.5, 0.0]]
    y_l = [0, 2]
    idx_u = [3, 0, 2, 1]  # shuffled: the step must look the cached labels up by index
    x_u = [[0.2, 0.1, 0.9], [1.0, -0.5, 0.0], [0.0, 0.0, 0.0], [-1.0, 2.0, 0.5]]
    batch = {"x_l": torch.tensor(x_l), "y_l": torch.tensor(y_l), "x_u": torch.tensor(x_u), "idx_u": torch.tensor(idx_u)}
    out = algo.train_step(batch, StepContext(step=1, lr=0.1))

    labelled = (ce(x_l[0], 0) + ce(x_l[1], 2)) / 2
    normal = ce(x_u[1], 0)  # pool image 0, the only agreement
    lam = 0.25
    mixup = ((lam * ce(x_u[0], 2) + (1 - lam) * ce(x_u[0], 0))  # pool image 3: T1 says 2, T2 says 0
             + (lam * ce(x_u[3], 1) + (1 - lam) * ce(x_u[3], 2))) / 2  # pool image 1: T1 says 1, T2 says 2
    assert out.logs["loss_labelled"].item() == pytest.approx(labelled, rel=1e-5)
    assert out.logs["loss_normal"].item() == pytest.approx(normal, rel=1e-5)
    assert out.logs["loss_mixup"].item() == pytest.approx(mixup, rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0 * labelled + normal + gamma * mixup, rel=1e-5)
    assert out.logs["frac_agree"].item() == pytest.approx(0.25)
    assert out.logs["frac_disagree"].item() == pytest.approx(0.5)
    assert out.logs["lambda_mean"].item() == pytest.approx(0.25)
    out.loss.backward()
    assert algo.model.linear.weight.grad is not None


def test_teli_step_without_disagreement_has_zero_mixup_and_no_lambda_log():
    algo = TeliStudent(Passthrough(3), T_LOGITS, TeliConfig(lambda_mode="fixed"), np.random.default_rng(0))
    batch = {"x_l": torch.zeros(1, 3), "y_l": torch.tensor([0]), "x_u": torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
             "idx_u": torch.tensor([0, 2])}
    out = algo.train_step(batch, StepContext(step=1, lr=0.1))
    assert out.logs["loss_mixup"].item() == 0.0
    assert "lambda_mean" not in out.logs
    assert out.loss.item() == pytest.approx(ce([0.0, 0.0, 0.0], 0) + ce([0.0, 1.0, 0.0], 0), rel=1e-5)


def test_teli_kd_term_uses_mean_tempered_teacher_distribution():
    cfg = TeliConfig(threshold=0.6, gamma=0.0, labelled_weight=0.0, kd_weight=0.5, kd_temperature=2.0, lambda_mode="fixed")
    algo = TeliStudent(Passthrough(3), T_LOGITS, cfg, np.random.default_rng(0))
    x_u = torch.tensor([[0.5, 0.0, 0.0]])
    batch = {"x_l": torch.zeros(1, 3), "y_l": torch.tensor([0]), "x_u": x_u, "idx_u": torch.tensor([1])}
    out = algo.train_step(batch, StepContext(step=1, lr=0.1))
    p = (F.softmax(T_LOGITS[0, 1] / 2, -1) + F.softmax(T_LOGITS[1, 1] / 2, -1)) / 2
    q = F.softmax(x_u[0] / 2, -1)
    kd = float((p * (p.log() - q.log())).sum() * 4)
    assert out.logs["loss_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.5 * kd, rel=1e-5)  # pool image 1 disagrees: no L_normal, gamma 0
