"""Batched augmentation on whole tensors (on the training device), and endless seeded batches.

Per-image PIL transforms would cost more than a small model's step; on in-memory tensors a whole
batch is shifted and flipped with one gather.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float().div_(255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def weak_augment(x: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect padding, then crop) and optional h-flip."""
    b, _, h, w = x.shape
    device = x.device
    if hflip:
        flip = torch.rand(b, generator=generator, device=device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "replicate")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # [B,1,H,1]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # [B,1,1,W]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    return x


# RandAugment's operations (FixMatch's list), each with its strength at magnitude m in [0, 1] and a random
# sign `s` in {-1, 1} where direction matters. They run on uint8 batches through torchvision.transforms.v2.
_FILL = [128]


def _affine(x, m, s, **kw):
    return TF.affine(x, angle=kw.get("angle", 0.0), translate=kw.get("translate", [0, 0]), scale=1.0,
                     shear=kw.get("shear", [0.0, 0.0]), fill=_FILL)


STRONG_OPS = {
    "identity": lambda x, m, s: x,
    "autocontrast": lambda x, m, s: TF.autocontrast(x),
    "equalize": lambda x, m, s: TF.equalize(x),
    "rotate": lambda x, m, s: _affine(x, m, s, angle=30.0 * m * s),
    "solarize": lambda x, m, s: TF.solarize(x, threshold=float(round(255 * (1 - m)))),
    "color": lambda x, m, s: TF.adjust_saturation(x, 1 + 0.9 * m * s) if x.shape[1] == 3 else x,
    "posterize": lambda x, m, s: TF.posterize(x, bits=8 - round(4 * m)),
    "contrast": lambda x, m, s: TF.adjust_contrast(x, 1 + 0.9 * m * s),
    "brightness": lambda x, m, s: TF.adjust_brightness(x, 1 + 0.9 * m * s),
    "sharpness": lambda x, m, s: TF.adjust_sharpness(x, 1 + 0.9 * m * s),
    "shear_x": lambda x, m, s: _affine(x, m, s, shear=[math.degrees(math.atan(0.3 * m * s)), 0.0]),
    "shear_y": lambda x, m, s: _affine(x, m, s, shear=[0.0, math.degrees(math.atan(0.3 * m * s))]),
    "translate_x": lambda x, m, s: _affine(x, m, s, translate=[round(0.3 * m * s * x.shape[-1]), 0]),
    "translate_y": lambda x, m, s: _affine(x, m, s, translate=[0, round(0.3 * m * s * x.shape[-2])]),
}


def cutout(x: torch.Tensor, size: float, generator: torch.Generator | None = None, fill: int = 128) -> torch.Tensor:
    """Per image, a square of side up to `size` x image side, at a random centre, set to grey."""
    b, _, h, w = x.shape
    device = x.device
    side = (torch.rand(b, generator=generator, device=device) * size * min(h, w)).round()
    cy = torch.randint(0, h, (b,), generator=generator, device=device)
    cx = torch.randint(0, w, (b,), generator=generator, device=device)
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    in_y = (ys[None] - cy[:, None]).abs() * 2 < side[:, None]  # [B, H]
    in_x = (xs[None] - cx[:, None]).abs() * 2 < side[:, None]  # [B, W]
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # [B, 1, H, W]
    return x.masked_fill(mask, fill)


def strong_augment(x: torch.Tensor, num_ops: int = 2, magnitude: float = 1.0, cutout_size: float = 0.5,
                   chunk: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandAugment-style strong augmentation of a batch (uint8, or float in [0, 1]; same dtype back).

    A transforms.v2 op applies one set of parameters to the whole tensor it is given, so the batch is
    cut into chunks of `chunk` images and each chunk draws its own `num_ops` operations, magnitudes in
    [0, magnitude] and signs (from `generator`, so a run is reproducible); then cutout per image.
    """
    is_float = x.is_floating_point()
    u8 = x.mul(255).round_().clamp_(0, 255).to(torch.uint8) if is_float else x
    b = len(u8)
    n_chunks = max(1, math.ceil(b / chunk))
    names = list(STRONG_OPS)
    device = u8.device
    ops = torch.randint(0, len(names), (n_chunks, num_ops), generator=generator, device=device).tolist()
    mags = (torch.rand(n_chunks, num_ops, generator=generator, device=device) * magnitude).tolist()
    signs = (torch.randint(0, 2, (n_chunks, num_ops), generator=generator, device=device) * 2 - 1).tolist()
    parts = []
    for i in range(n_chunks):
        part = u8[i * chunk : (i + 1) * chunk]
        for op, m, s in zip(ops[i], mags[i], signs[i]):
            part = STRONG_OPS[names[op]](part, m, s)
        parts.append(part)
    out = torch.cat(parts)
    if cutout_size > 0:
        out = cutout(out, cutout_size, generator)
    return out.float().div_(255) if is_float else out


def default_pad(image_size: int) -> int:
    """FixMatch's 12.5 % translation (4 px at 32 px), at least one pixel."""
    return max(1, round(0.125 * image_size))


class RandomBatches:
    """Endless batches of indices into `n` items: a fresh permutation each pass, seeded."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._order = torch.empty(0, dtype=torch.long)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        while len(self._order) < self.batch_size:
            self._order = torch.cat([self._order, torch.randperm(self.n, generator=self.generator)])
        batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return batch
