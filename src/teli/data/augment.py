"""Batched augmentation on whole tensors (on the training device), and endless seeded batches.

Per-image PIL transforms would cost more than a small model's step; on in-memory tensors a whole
batch is shifted and flipped with one gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
