"""Strong (RandAugment-style + cutout) batched augmentation, and the strong view in SSLBatches."""

from __future__ import annotations

import pytest
import torch

from teli.data import SSLBatches, augment, loader, strong_augment
from teli.data.augment import STRONG_OPS, cutout
from teli.data.loader import SSLData


def images(n=32, c=3, size=16, seed=0):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [n for n in STRONG_OPS if n != "identity"])
def test_each_op_keeps_shape_and_dtype_and_changes_the_image(name, channels):
    x = images(4, channels)
    y = STRONG_OPS[name](x, 1.0, 1)
    assert y.shape == x.shape and y.dtype == torch.uint8
    if not (name == "color" and channels == 1):  # saturation is meaningless for grey
        assert not torch.equal(x, y)


def test_uint8_and_float_in_and_out():
    x = images()
    g = torch.Generator().manual_seed(3)
    out = strong_augment(x, generator=g)
    assert out.dtype == torch.uint8 and out.shape == x.shape and not torch.equal(out, x)
    xf = x.float() / 255
    outf = strong_augment(xf, generator=torch.Generator().manual_seed(3))
    assert outf.dtype == torch.float32 and 0 <= outf.min() and outf.max() <= 1
    assert torch.equal((outf * 255).round().to(torch.uint8), out)  # the same ops on the same draws


def test_seeded_and_diverse_within_a_batch():
    x = images(1).expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    a = strong_augment(x, cutout_size=0, generator=torch.Generator().manual_seed(0))
    b = strong_augment(x, cutout_size=0, generator=torch.Generator().manual_seed(0))
    c = strong_augment(x, cutout_size=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct_chunks = {a[i : i + 8].flatten().numpy().tobytes() for i in range(0, 64, 8)}
    assert len(distinct_chunks) >= 4  # chunks draw their own ops: not one op for the whole batch


def test_cutout_masks_a_bounded_square_per_image():
    x = torch.zeros(200, 1, 20, 20, dtype=torch.uint8)
    out = cutout(x, 0.5, torch.Generator().manual_seed(0))
    grey = (out == 128).sum(dim=(1, 2, 3))
    assert grey.max() <= 10 * 10 and grey.float().mean() > 5 and (out[out != 0] == 128).all()
    assert len(set(grey.tolist())) > 5  # sizes and places vary per image


def constant_data(n_u=50):
    """Each pool image is one constant value, so weak augmentation cannot change it."""
    x_u = torch.arange(n_u, dtype=torch.uint8).mul(5).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    y = torch.zeros(10, dtype=torch.long)
    return SSLData(dataset="toy", x_l=x_u[:10], y_l=y, x_val=x_u[:0], y_val=y[:0], x_u=x_u, y_u_hidden=None, x_test=x_u[:5],
                   y_test=y[:5], num_classes=2, mean=torch.tensor([0.5]), std=torch.tensor([0.25]), hflip=True)


def test_batches_strong_view_holds_the_same_images(monkeypatch):
    data = constant_data()
    assert "x_u_strong" not in next(SSLBatches(data, 4, 16, seed=0))
    monkeypatch.setattr(loader, "strong_augment", lambda x, generator=None: x)  # strong = identity: views must match
    batch = next(SSLBatches(data, 4, 16, seed=0, strong=True))
    assert torch.equal(batch["x_u_strong"], batch["x_u"]) and batch["x_u"].dtype == torch.float32


def test_batches_strong_view_is_augmented_and_normalised():
    data = SSLData(**{**vars(constant_data()), "x_u": images(50, 1, 8)})
    batch = next(SSLBatches(data, 4, 16, seed=0, strong=True))
    weak_pixels = data.prepare(data.x_u[batch["idx_u"]])
    assert batch["x_u_strong"].shape == batch["x_u"].shape == weak_pixels.shape
    assert not torch.allclose(batch["x_u_strong"], batch["x_u"])
    assert batch["x_u_strong"].min() >= (0 - 0.5) / 0.25 - 1e-5 and batch["x_u_strong"].max() <= (1 - 0.5) / 0.25 + 1e-5


def test_strong_augment_is_exported_from_augment():
    assert augment.strong_augment is strong_augment
