"""The split data as tensors on the training device, and the batches an algorithm trains on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from teli.data.augment import RandomBatches, default_pad, normalize, strong_augment, weak_augment
from teli.data.datasets import ImageDataset
from teli.data.split import Split


@dataclass
class SSLData:
    """Labelled, held-out, unlabelled and test images (uint8, on the device) and how to prepare them."""

    dataset: str
    x_l: torch.Tensor
    y_l: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_u: torch.Tensor
    y_u_hidden: torch.Tensor | None  # labels of the unlabelled pool: diagnostics only, never training
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    hflip: bool

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_l.shape[1:])

    @property
    def pad(self) -> int:
        return default_pad(self.input_shape[1])

    def prepare(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return normalize(x_uint8, self.mean, self.std)

    def weak(self, x_uint8: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return weak_augment(self.prepare(x_uint8), self.pad, self.hflip, generator)

    def strong(self, x_uint8: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """RandAugment-style ops and cutout on the uint8 images, then normalised, translated and flipped."""
        return weak_augment(self.prepare(strong_augment(x_uint8, generator=generator)), self.pad, self.hflip, generator)

    def to(self, device: torch.device | str) -> "SSLData":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return SSLData(**moved)


def make_ssl_data(ds: ImageDataset, split: Split) -> SSLData:
    x_u, y_u = ds.x_train[split.unlabelled], ds.y_train[split.unlabelled]
    if ds.x_extra_unlabelled is not None:  # an unlabelled split of its own (STL-10): no hidden labels
        x_u, y_u = torch.cat([x_u, ds.x_extra_unlabelled]), None
    return SSLData(
        dataset=ds.name,
        x_l=ds.x_train[split.labelled], y_l=ds.y_train[split.labelled],
        x_val=ds.x_train[split.val], y_val=ds.y_train[split.val],
        x_u=x_u, y_u_hidden=y_u,
        x_test=ds.x_test, y_test=ds.y_test,
        num_classes=ds.num_classes,
        mean=torch.tensor(ds.mean), std=torch.tensor(ds.std), hflip=ds.hflip,
    )


class SSLBatches:
    """Endless training batches: weakly augmented labelled images, and (if asked) weakly augmented
    unlabelled images with their indices into the pool, so that cached teacher outputs can be looked up.

    With `strong=True` the batch also holds `x_u_strong`: the same unlabelled images (same order as
    `x_u` and `idx_u`), strongly augmented, for the student's unlabelled input.

    One seeded generator drives order and augmentation, so a run is reproducible from its seed.
    """

    def __init__(self, data: SSLData, labelled_batch: int, unlabelled_batch: int = 0, seed: int = 0, strong: bool = False):
        self.data = data
        self.strong = strong
        self.generator = torch.Generator().manual_seed(seed)
        self.aug_generator = torch.Generator(device=data.x_l.device).manual_seed(seed + 1)
        self.rng = np.random.default_rng(seed + 2)  # for algorithms' own draws (Beta lambda, ...)
        self.labelled = RandomBatches(len(data.x_l), labelled_batch, self.generator)
        self.unlabelled = RandomBatches(len(data.x_u), unlabelled_batch, self.generator) if unlabelled_batch else None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        device = self.data.x_l.device
        idx_l = next(self.labelled).to(device)
        batch = {"x_l": self.data.weak(self.data.x_l[idx_l], self.aug_generator), "y_l": self.data.y_l[idx_l]}
        if self.unlabelled is not None:
            idx_u = next(self.unlabelled).to(device)
            batch["idx_u"] = idx_u
            x_u = self.data.x_u[idx_u]
            batch["x_u"] = self.data.weak(x_u, self.aug_generator)
            if self.strong:
                batch["x_u_strong"] = self.data.strong(x_u, self.aug_generator)
        return batch
