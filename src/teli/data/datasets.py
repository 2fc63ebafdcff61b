"""Datasets as in-memory uint8 tensors, looked up by name.

Every loader returns an `ImageDataset`: a training pool with labels, an official test split, and
what augmentation and normalisation need to know about the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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


def _standard(name: str) -> Callable[[str, bool, float], ImageDataset]:
    def load(data_root: str, download: bool, test_fraction: float) -> ImageDataset:
        from teli.data.torchvision_sources import load_standard

        return assemble(name, load_standard(name, data_root, download), test_fraction)

    load.__doc__ = f"{name} through torchvision's layout under data_root (teli.data.torchvision_sources)."
    return load


DATASETS: dict[str, Callable[[str, bool, float], ImageDataset]] = {
    "digits": load_digits,
    **{name: _standard(name) for name in ("mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10", "tiny-imagenet")},
}


def assemble(name: str, arrays: dict, test_fraction: float) -> ImageDataset:
    """An ImageDataset from loaded arrays; without x_test, a stratified test split is held out (seed 0)."""
    x, y = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if x_test is None:
        try:
            train_idx, test_idx = stratified_test_split(y.numpy(), test_fraction, seed=0)
        except ValueError as err:
            raise TeliError(f"cannot hold out a stratified {test_fraction:.0%} test split of {name} ({str(err).splitlines()[0]}): "
                            f"add a test set or more images per class") from None
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    if "mean" in arrays:
        mean, std = tuple(arrays["mean"]), tuple(arrays["std"])
    else:
        mean, std = channel_stats(x)
    return ImageDataset(name=name, x_train=x, y_train=y, x_test=x_test, y_test=y_test, num_classes=arrays["num_classes"],
                        mean=mean, std=std, hflip=arrays.get("hflip", False), x_extra_unlabelled=arrays.get("x_extra_unlabelled"))


def _convert(x: torch.Tensor | None, channels: int | None, resize: int | None, chunk: int = 4096) -> torch.Tensor | None:
    if x is None or ((channels is None or x.shape[1] == channels) and (resize is None or x.shape[2:] == (resize, resize))):
        return x
    import torch.nn.functional as F

    out = []
    for part in x.split(chunk):
        part = part.float()
        if channels == 3 and part.shape[1] == 1:
            part = part.expand(-1, 3, -1, -1)
        elif channels == 1 and part.shape[1] == 3:
            part = (part * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if resize is not None and part.shape[2:] != (resize, resize):
            part = F.interpolate(part, size=(resize, resize), mode="bilinear", antialias=True, align_corners=False)
        out.append(part.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def adapt(ds: ImageDataset, channels: int | None = None, resize: int | None = None) -> ImageDataset:
    """Grey <-> RGB and square resizing, for models that need them; statistics follow the channels."""
    c = ds.x_train.shape[1]
    if channels not in (None, 1, 3):
        raise TeliError(f"data.channels is {channels}: it must be 1, 3 or null")
    new = {k: _convert(getattr(ds, k), channels, resize) for k in ("x_train", "x_test", "x_extra_unlabelled")}
    mean, std = ds.mean, ds.std
    if channels == 3 and c == 1:
        mean, std = mean * 3, std * 3
    elif channels == 1 and c == 3:
        mean, std = channel_stats(new["x_train"])
    h, w = new["x_train"].shape[2:]
    if h != w:
        raise TeliError(f"images of {ds.name} are {w}x{h}, not square: pass --resize N to resize them to NxN")
    return ImageDataset(**{**vars(ds), **new, "mean": mean, "std": std})


def load_dataset(name: str, data_root: str = "data", download: bool = False, test_fraction: float = 0.3, *,
                 source: str | None = None, resize: int | None = None, channels: int | None = None,
                 on_corrupt: str = "error", hflip: bool | None = None, cache: bool = True) -> ImageDataset:
    """A dataset by name (see DATASETS), or your own data with `source='folder:PATH' | 'npz:PATH'`."""
    if source is not None:
        from teli.data.user_data import load_user_data

        arrays = load_user_data(source, data_root, resize, on_corrupt, cache)
        kind, _, path = source.partition(":")
        ds = assemble((Path(path).stem if kind == "npz" else Path(path).name) or source, arrays, test_fraction)
    elif name not in DATASETS:
        raise TeliError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}, or --data folder:PATH | npz:PATH")
    else:
        ds = DATASETS[name](data_root, download, test_fraction)
    ds = adapt(ds, channels, resize)
    if hflip is not None:
        ds.hflip = hflip
    return ds
