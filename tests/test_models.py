"""Every registered model builds for small grey and CIFAR-sized colour inputs and returns logits."""

from __future__ import annotations

import pytest
import torch

from teli.config import ModelConfig
from teli.errors import TeliError
from teli.models import MODELS, build_model, count_parameters

# Thin widths keep resnet18/vgg fast on two CPUs; the shapes are what is tested.
SMALL_WIDTH = {"cnn": 8, "mlp": 32, "resnet18": 8, "vgg11": 8, "vgg13": 8}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_builds_and_returns_logits(name, shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=name, width=SMALL_WIDTH.get(name, 8)), shape, num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    model.train()
    out = model(torch.randn(2, *shape))  # train mode (BatchNorm) with a batch of two
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_registry_lists_the_documented_models():
    assert {"cnn", "mlp", "resnet18", "vgg11", "vgg13"} <= set(MODELS)


def test_unknown_model():
    with pytest.raises(TeliError, match="unknown model 'nope'"):
        build_model(ModelConfig(arch="nope"), (1, 8, 8), 10)


def test_cnn_depth_and_width_change_the_parameter_count():
    def n(**kw):
        return count_parameters(build_model(ModelConfig(arch="cnn", **kw), (1, 8, 8), 10))

    base = n(width=16, depth=2)
    assert n(width=32, depth=2) > base
    assert n(width=16, depth=3) > base
    assert n(width=16, depth=1) < base
    # depth 1, width w: conv(1->w) + conv(w->w) + 2 BN + linear(w->10)
    w = 4
    assert n(width=w, depth=1) == 9 * w + 9 * w * w + 2 * 2 * w + (w * 10 + 10)


def test_mlp_width_changes_the_parameter_count():
    small = count_parameters(build_model(ModelConfig(arch="mlp", width=16), (1, 8, 8), 10))
    big = count_parameters(build_model(ModelConfig(arch="mlp", width=64), (1, 8, 8), 10))
    assert big > small
