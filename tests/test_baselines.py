"""The comparison methods (teli.algorithms: pseudo-label, ensemble-kd, fixmatch): their losses by hand,
and that each learns on digits through the real pipeline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from teli import pipeline
from teli.algorithms import USES_STRONG, EnsembleKD, FixMatch, PseudoLabel
from teli.algorithms.ensemble_kd import ensemble_targets
from teli.algorithms.fixmatch import fixmatch_unlabelled_loss
from teli.config import build_config
from teli.engine import StepContext
from teli.pipeline import student_optim

CTX = StepContext(step=1, lr=0.1)


class Logits(nn.Module):
    """A 'model' whose output is its input: batches of hand-made logits go straight into the losses."""

    def forward(self, x):
        return x


def batch(n_l=2, n_u=3, c=4, seed=0, strong=False):
    g = torch.Generator().manual_seed(seed)
    b = {"x_l": torch.randn(n_l, c, generator=g), "y_l": torch.arange(n_l) % c,
         "x_u": torch.randn(n_u, c, generator=g), "idx_u": torch.arange(n_u)}
    if strong:
        b["x_u_strong"] = torch.randn(n_u, c, generator=g)
    return b


# ----------------------------------------------------------------------------- FixMatch


def test_fixmatch_mask_labels_and_loss_by_hand():
    weak = torch.tensor([[10.0, 0.0, 0.0],   # p_max ~ 0.9999 >= 0.95: used, label 0
                         [0.0, 2.0, 0.0],    # p_max ~ 0.79 < 0.95: masked
                         [0.0, 0.0, 4.0]])   # p_max ~ 0.964 >= 0.95: used, label 2
    strong = torch.tensor([[0.0, 1.0, 0.0], [5.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    loss, mask, labels = fixmatch_unlabelled_loss(weak, strong, 0.95)
    assert mask.tolist() == [True, False, True]
    assert labels[[0, 2]].tolist() == [0, 2]
    ce0 = -F.log_softmax(strong[0], -1)[0]
    ce2 = math.log(3.0)
    assert loss.item() == pytest.approx((ce0.item() + ce2) / 3, rel=1e-6)  # mean over the whole batch
    # the threshold is inclusive and is the one given
    assert fixmatch_unlabelled_loss(weak, strong, 0.5)[1].tolist() == [True, True, True]


def test_fixmatch_gradient_flows_into_the_strong_view_only():
    weak = torch.tensor([[10.0, 0.0], [0.0, 0.1]], requires_grad=True)
    strong = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss, _, _ = fixmatch_unlabelled_loss(weak, strong, 0.95)
    loss.backward()
    assert weak.grad is None  # the pseudo-label is a constant target
    assert strong.grad[0].abs().sum() > 0 and strong.grad[1].abs().sum() == 0  # masked image: no gradient


def test_fixmatch_step_labels_from_the_weak_view_and_loss_on_the_strong_view():
    cfg = build_config()
    fm = FixMatch(Logits(), cfg)
    b = batch(strong=True)
    b["x_u"] = torch.tensor([[20.0, 0, 0, 0], [0, 20.0, 0, 0], [0, 0, 0.1, 0]])  # two confident, one not
    out = fm.train_step(b, CTX)
    expected = F.cross_entropy(b["x_l"], b["y_l"]) + fixmatch_unlabelled_loss(b["x_u"], b["x_u_strong"], 0.95)[0]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.logs["frac_confident"].item() == pytest.approx(2 / 3)
    changed = dict(b, x_u_strong=b["x_u_strong"] + torch.tensor([3.0, 0, 0, 0]))
    assert fm.train_step(changed, CTX).loss.item() != pytest.approx(out.loss.item())  # the strong view is what is trained
    with pytest.raises(Exception, match="strong"):
        fm.train_step(batch(strong=False), CTX)


def test_pipeline_gives_fixmatch_strong_batches_and_ema():
    assert "fixmatch" in USES_STRONG
    cfg = build_config(overrides={"algorithm": "fixmatch"})
    assert student_optim(cfg).ema_decay == 0.999
    assert student_optim(build_config(overrides={"algorithm": "fixmatch", "student.optim.ema_decay": 0.9})).ema_decay == 0.9
    assert student_optim(build_config()).ema_decay is None  # TELI keeps the configured (no) EMA


# ----------------------------------------------------------------------------- pseudo-label and ensemble-KD


def test_pseudo_label_uses_exactly_one_teacher():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, generator=g) * 4
    b = batch()

    def loss(logits, teacher=0):
        cfg = build_config(overrides={"baselines.teacher": teacher, "teli.threshold": 0.0})
        return PseudoLabel(Logits(), logits, cfg).train_step(b, CTX).loss.item()

    other = logits.clone()
    other[1] = -other[1]  # change the teacher that is not used
    assert loss(other) == loss(logits)
    mine = logits.clone()
    mine[0] = -mine[0]
    assert loss(mine) != pytest.approx(loss(logits))
    assert loss(mine, teacher=1) == loss(logits, teacher=1)  # and teacher=1 reads only teacher 1
    expected = F.cross_entropy(b["x_l"], b["y_l"]) + F.cross_entropy(b["x_u"], logits[0].argmax(-1))
    assert loss(logits) == pytest.approx(expected.item(), rel=1e-6)


def test_pseudo_label_masks_unconfident_images():
    logits = torch.tensor([[[9.0, 0, 0, 0], [0.1, 0, 0, 0], [0, 0, 9.0, 0]], [[0.0, 9, 0, 0]] * 3])
    cfg = build_config(overrides={"teli.threshold": 0.9})
    b = batch()
    out = PseudoLabel(Logits(), logits, cfg).train_step(b, CTX)
    ce = F.cross_entropy(b["x_u"], torch.tensor([0, 0, 2]), reduction="none")
    assert out.loss.item() == pytest.approx((F.cross_entropy(b["x_l"], b["y_l"]) + ce[[0, 2]].mean()).item(), rel=1e-6)
    with pytest.raises(Exception, match="baselines.teacher"):
        PseudoLabel(Logits(), logits, build_config(overrides={"baselines.teacher": 2}))


def test_ensemble_kd_target_is_the_mean_of_tempered_softmaxes():
    z1, z2 = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 8.0]])
    t = 2.0
    p1 = torch.exp(z1 / t) / torch.exp(z1 / t).sum()
    p2 = torch.exp(z2 / t) / torch.exp(z2 / t).sum()
    assert torch.allclose(ensemble_targets(torch.stack([z1, z2]), t), (p1 + p2) / 2)

    cfg = build_config(overrides={"baselines.kd_temperature": t})
    b = batch(n_u=1, c=3)
    out = EnsembleKD(Logits(), torch.stack([z1, z2]), cfg).train_step(b, CTX)
    target = (p1 + p2) / 2
    q = F.softmax(b["x_u"] / t, dim=-1)
    kl = (target * (target.log() - q.log())).sum() * t * t
    assert out.loss.item() == pytest.approx((F.cross_entropy(b["x_l"], b["y_l"]) + kl).item(), rel=1e-5)


# ----------------------------------------------------------------------------- they learn


@pytest.mark.parametrize("algorithm", ["pseudo-label", "ensemble-kd", "fixmatch"])
def test_baseline_learns_on_digits(tiny_config, algorithm):
    cfg = build_config(tiny_config.model_dump(), overrides={
        "algorithm": algorithm, "baseline": False, "teachers.optim.steps": 40, "student.optim.steps": 40,
        "baselines.fixmatch_ema": 0.8})
    summary = pipeline.run(cfg)
    student = next(m for m in summary["models"] if m["name"] == f"student ({algorithm})")
    assert student["accuracy"] > 0.5  # chance is 0.1
    teachers = [m for m in summary["models"] if m["name"].startswith("teacher")]
    assert len(teachers) == (0 if algorithm == "fixmatch" else 2)  # FixMatch trains no teachers


def test_supervised_algorithm_trains_one_student_and_no_teachers(tiny_config):
    summary = pipeline.run(build_config(tiny_config.model_dump(), overrides={"algorithm": "supervised"}))
    assert [m["name"] for m in summary["models"]] == ["student (supervised)"]
