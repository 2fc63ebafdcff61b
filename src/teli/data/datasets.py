"""Datasets as in-memory uint8 tensors, looked up by name.

Every loader returns an `ImageDataset`: a training pool with labels, an official test split, and
what augmentation and normalisation need to know about the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from teli.errors import TeliError


@dataclass
class ImageDataset:
    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]: the pool the labelled set is drawn from
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    hflip: bool  # is a horizontal flip label-preserving (not for digits or letters)
    x_extra_unlabelled: torch.Tensor | None = None  # e.g. STL-10's unlabelled split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale."""
    xf = x.float().div_(255)
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def stratified_test_split(y: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


def load_digits(data_root: str, download: bool, test_fraction: float) -> ImageDataset:
    """scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn: always offline).

    It has no official test split, so a fixed stratified one is held out (seed 0, whatever the run's
    seed) so that every run and every seed is scored on the same images.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_test_split(labels, test_fraction, seed=0)
    x_train = torch.from_numpy(images[train_idx])
    mean, std = channel_stats(x_train)
    return ImageDataset(
        name="digits",
        x_train=x_train,
        y_train=torch.from_numpy(labels[train_idx]),
        x_test=torch.from_numpy(images[test_idx]),
        y_test=torch.from_numpy(labels[test_idx]),
        num_classes=10,
        mean=mean,
        std=std,
        hflip=False,
    )


DATASETS: dict[str, Callable[[str, bool, float], ImageDataset]] = {"digits": load_digits}


def load_dataset(name: str, data_root: str = "data", download: bool = False, test_fraction: float = 0.3) -> ImageDataset:
    if name not in DATASETS:
        raise TeliError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_root, download, test_fraction)
