"""Does the lambda head learn whom to trust? Synthetic teachers on the digits pool, whose
disagreements follow a known rule; the head sees only their logits and the meta-gradient."""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score

from teli.algorithms.meta import MetaTeliStudent
from teli.config import ModelConfig, OptimConfig, TeliConfig, load_config
from teli.data import SSLBatches
from teli.engine import setup_fabric, train
from teli.models import build_model
from teli.pipeline import prepare_data


def synthetic_teachers(y: torch.Tensor, rule: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits [2, U, 10] that disagree on 40 % of the pool; returns (logits, teacher1_right on D)."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    disagree = torch.rand(n, generator=g) < 0.4
    if rule == "teacher1":
        t1_right = torch.ones(n, dtype=torch.bool)
    elif rule == "feature":  # teacher 1 is right on classes 0-4, teacher 2 on 5-9
        t1_right = y < 5
    elif rule == "random":  # a coin flip per image: nothing in the logits says who is right
        t1_right = torch.rand(n, generator=g) < 0.5
    else:
        raise ValueError(rule)
    # the wrong teacher names another class of the same half, so the predictions reveal the half
    wrong = (y // 5) * 5 + (y % 5 + torch.randint(1, 5, (n,), generator=g)) % 5
    label1 = torch.where(disagree & ~t1_right, wrong, y)
    label2 = torch.where(disagree & t1_right, wrong, y)
    logits = 0.5 * torch.randn(2, n, 10, generator=g)
    logits[0, torch.arange(n), label1] += 6
    logits[1, torch.arange(n), label2] += 6
    return logits, t1_right


def learn_head(rule: str, steps: int = 300):
    """Train on 70 % of the pool; return lambda and 'teacher 1 right' on the held-out 30 %'s
    disagreements, which the head never saw: what it learned must generalise, not be memorised."""
    cfg = load_config()
    fabric = setup_fabric(seed=0)
    data = prepare_data(cfg)
    all_logits, all_t1_right = synthetic_teachers(data.y_u_hidden, rule)
    n_train = int(0.7 * len(data.x_u))
    data.x_u, data.y_u_hidden = data.x_u[:n_train], data.y_u_hidden[:n_train]
    logits = all_logits[:, :n_train]
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", width=16, depth=1), data.input_shape, data.num_classes)
    teli_cfg = TeliConfig(lambda_mode="meta", gamma=1.0, meta_lr=1e-2, meta_dropout=0.0)
    batches = SSLBatches(data, 32, 64, seed=0)
    student = MetaTeliStudent(model, logits, teli_cfg, batches.rng)
    train(student, batches, OptimConfig(steps=steps, lr=0.03), fabric=fabric, stage="meta", progress=False)
    held_out = MetaTeliStudent(model, all_logits[:, n_train:], teli_cfg, batches.rng)
    held_out.head = student.head
    on_d = held_out.labels.disagree
    return held_out.pool_weights()[:, 0][on_d].numpy(), all_t1_right[n_train:][on_d].numpy()


def test_head_learns_that_teacher1_is_always_right():
    lam, _ = learn_head("teacher1")
    assert (lam > 0.5).mean() >= 0.95, f"lambda > 0.5 on {100 * (lam > 0.5).mean():.0f}% of disagreements"


def test_head_learns_a_rule_that_depends_on_the_logits():
    lam, t1_right = learn_head("feature")
    assert roc_auc_score(t1_right, lam) >= 0.95


def test_head_stays_near_chance_when_nothing_tells_the_teachers_apart():
    lam, t1_right = learn_head("random")
    # ~150 held-out disagreements: the AUC's standard error is about 0.05
    assert abs(roc_auc_score(t1_right, lam) - 0.5) < 0.15
