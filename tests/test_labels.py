"""Hand-computed cases for every function in teli.labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from teli.labels import (
    agreement_split,
    confidence_mask,
    interpolated_targets,
    kd_loss,
    masked_mean,
    pair_weights,
    pseudo_labels,
    sample_weights,
    soft_cross_entropy,
)

# ---------------------------------------------------------------------------------------------
# confidence_mask / agreement_split / pseudo_labels


def test_confidence_mask_every_teacher_must_be_confident():
    # 2 teachers, 3 images, 2 classes; top probabilities: T1 (0.9, 0.55, 0.7), T2 (0.8, 0.9, 0.65)
    probs = torch.tensor([
        [[0.9, 0.1], [0.45, 0.55], [0.3, 0.7]],
        [[0.2, 0.8], [0.9, 0.1], [0.35, 0.65]],
    ])
    assert confidence_mask(probs, 0.6).tolist() == [True, False, True]
    assert confidence_mask(probs, 0.7).tolist() == [True, False, False]


def test_confidence_mask_threshold_equality_counts_as_confident():
    probs = torch.tensor([[[0.75, 0.25]], [[0.25, 0.75]]])  # exactly representable in binary
    assert confidence_mask(probs, 0.75).tolist() == [True]
    assert confidence_mask(probs, 0.75 + 1e-6).tolist() == [False]


def test_confidence_mask_off_is_all_true():
    probs = torch.full((2, 4, 5), 0.2)  # nobody confident at all
    assert confidence_mask(probs, 0.6).tolist() == [False] * 4
    mask = confidence_mask(probs, 0.6, enabled=False)
    assert mask.dtype == torch.bool and mask.tolist() == [True] * 4


def test_agreement_split_two_and_three_teachers():
    preds = torch.tensor([[1, 2, 3, 0], [1, 0, 3, 0]])
    confident = torch.tensor([True, True, False, True])
    agree, disagree = agreement_split(preds, confident)
    assert agree.tolist() == [True, False, False, True]
    assert disagree.tolist() == [False, True, False, False]

    preds3 = torch.tensor([[1, 1, 2], [1, 1, 2], [1, 0, 2]])  # third teacher breaks image 1
    agree, disagree = agreement_split(preds3, torch.tensor([True, True, True]))
    assert agree.tolist() == [True, False, True]
    assert disagree.tolist() == [False, True, False]


def test_pseudo_labels_with_temperature():
    # T1 logits (ln 3, 0): probs (0.75, 0.25) at tau=1, (sqrt3, 1)/(sqrt3+1) ~ (0.634, 0.366) at tau=2
    # T2 logits (0, ln 3): the other class, same confidence.
    logits = torch.tensor([[[math.log(3), 0.0]], [[0.0, math.log(3)]]])
    pl = pseudo_labels(logits, temperature=1.0, threshold=0.7)
    torch.testing.assert_close(pl.probs[0, 0], torch.tensor([0.75, 0.25]))
    assert pl.preds.tolist() == [[0], [1]]
    assert pl.confident.tolist() == [True]
    assert pl.agree.tolist() == [False] and pl.disagree.tolist() == [True]

    hot = pseudo_labels(logits, temperature=2.0, threshold=0.7)
    s3 = math.sqrt(3)
    torch.testing.assert_close(hot.probs[0, 0], torch.tensor([s3 / (s3 + 1), 1 / (s3 + 1)]))
    assert hot.preds.tolist() == [[0], [1]]  # temperature does not change the argmax
    assert hot.confident.tolist() == [False]  # ... but it lowers the confidence below 0.7
    assert hot.disagree.tolist() == [False]

    unmasked = pseudo_labels(logits, temperature=2.0, threshold=0.7, use_mask=False)
    assert unmasked.confident.tolist() == [True] and unmasked.disagree.tolist() == [True]


def test_pseudo_labels_agreement_needs_confidence():
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]], [[4.0, 0.0, 0.0], [0.2, 0.0, 0.0]]])
    pl = pseudo_labels(logits, threshold=0.6)
    assert pl.preds.tolist() == [[0, 0], [0, 0]]
    assert pl.agree.tolist() == [True, False]  # image 1: agreed, but ~0.36 confidence
    assert pl.disagree.tolist() == [False, False]


# ---------------------------------------------------------------------------------------------
# pair_weights / interpolated_targets


def test_pair_weights():
    w = pair_weights(torch.tensor([0.3, 1.0]))
    torch.testing.assert_close(w, torch.tensor([[0.3, 0.7], [1.0, 0.0]]))


def test_interpolated_targets_two_teachers():
    preds = torch.tensor([[0, 2], [1, 2]])  # image 0: T1 says 0, T2 says 1; image 1: both say 2
    weights = pair_weights(torch.tensor([0.3, 0.8]))
    targets = interpolated_targets(preds, weights, num_classes=3)
    # lambda*y1 + (1-lambda)*y2: (0.3, 0.7, 0) and 0.8*e2 + 0.2*e2 = e2
    torch.testing.assert_close(targets, torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]))


def test_interpolated_targets_three_teachers_same_class_adds_up():
    preds = torch.tensor([[0, 3], [2, 1], [0, 2]])  # image 0: T1 and T3 both name class 0
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    targets = interpolated_targets(preds, weights, num_classes=4)
    expected = torch.tensor([[0.7, 0.0, 0.3, 0.0],  # 0.5 + 0.2 on class 0, 0.3 on class 2
                             [0.0, 0.6, 0.3, 0.1]])
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(2))


# ---------------------------------------------------------------------------------------------
# soft_cross_entropy / masked_mean / kd_loss


def test_soft_cross_entropy_matches_cross_entropy_on_one_hot():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    got = soft_cross_entropy(logits, F.one_hot(y, 5).float())
    torch.testing.assert_close(got, F.cross_entropy(logits, y, reduction="none"))


def test_soft_cross_entropy_is_linear_in_the_target():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = F.log_softmax(logits, dim=-1)[0]
    got = soft_cross_entropy(logits, torch.tensor([[0.3, 0.7, 0.0]]))
    torch.testing.assert_close(got, (-(0.3 * log_p[0] + 0.7 * log_p[1])).reshape(1))


def test_masked_mean():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert masked_mean(values, torch.tensor([True, False, True, False])).item() == pytest.approx(2.0)


def test_masked_mean_empty_mask_is_zero_and_differentiable():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = masked_mean(x * 3, torch.tensor([False, False]))
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    torch.testing.assert_close(x.grad, torch.zeros(2))


def test_kd_loss_zero_when_distributions_equal_and_positive_otherwise():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    t = 4.0
    same = F.softmax(student / t, dim=-1)
    torch.testing.assert_close(kd_loss(student, same, t), torch.zeros(2), atol=1e-6, rtol=0)
    other = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) * 0.9 + 0.1 / 3
    loss = kd_loss(student, other, t)
    assert (loss > 0).all()
    # KL(p || q) * T^2 by hand for the first image
    q = F.softmax(student[0] / t, dim=-1)
    by_hand = (other[0] * (other[0].log() - q.log())).sum() * t**2
    torch.testing.assert_close(loss[0], by_hand)


# ---------------------------------------------------------------------------------------------
# sample_weights


def test_sample_weights_fixed():
    rng = np.random.default_rng(0)
    w = sample_weights(2, 3, "fixed", alpha=0.1, fixed=0.3, per="batch", rng=rng)
    torch.testing.assert_close(w, torch.tensor([[0.3, 0.7]] * 3))
    w3 = sample_weights(3, 2, "fixed", alpha=0.1, fixed=0.3, per="sample", rng=rng)
    torch.testing.assert_close(w3, torch.full((2, 3), 1 / 3))


def test_sample_weights_beta_per_batch_identical_rows():
    w = sample_weights(2, 8, "beta", alpha=0.5, fixed=0.5, per="batch", rng=np.random.default_rng(1))
    assert w.shape == (8, 2)
    assert (w == w[0]).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(8))
    assert ((w >= 0) & (w <= 1)).all()


def test_sample_weights_beta_per_sample_rows_differ():
    w = sample_weights(2, 8, "beta", alpha=0.5, fixed=0.5, per="sample", rng=np.random.default_rng(1))
    assert w.shape == (8, 2)
    assert len(set(w[:, 0].tolist())) == 8
    torch.testing.assert_close(w.sum(dim=1), torch.ones(8))


def test_sample_weights_small_alpha_stays_on_the_simplex():
    # alpha = 0.1 (the original default) puts most mass near 0 and 1: no NaN, rows still sum to 1
    w = sample_weights(2, 500, "beta", alpha=0.1, fixed=0.5, per="sample", rng=np.random.default_rng(3))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(500))
    lam = w[:, 0]
    assert ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.5  # U-shaped Beta(0.1, 0.1)


def test_sample_weights_reproducible_with_the_same_seed():
    a = sample_weights(2, 4, "beta", 0.3, 0.5, "sample", np.random.default_rng(42))
    b = sample_weights(2, 4, "beta", 0.3, 0.5, "sample", np.random.default_rng(42))
    c = sample_weights(2, 4, "beta", 0.3, 0.5, "sample", np.random.default_rng(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_weights_dirichlet_for_three_teachers():
    w = sample_weights(3, 5, "beta", alpha=1.0, fixed=0.5, per="sample", rng=np.random.default_rng(0))
    assert w.shape == (5, 3)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(5))
    assert (w > 0).all()
    expected = torch.from_numpy(np.random.default_rng(0).dirichlet([1.0] * 3, size=5)).float()
    torch.testing.assert_close(w, expected)


def test_sample_weights_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        sample_weights(2, 4, "meta", 0.1, 0.5, "batch", np.random.default_rng(0))
