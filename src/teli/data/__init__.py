"""Data: datasets by name, the labelled/unlabelled split, batched augmentation."""

from teli.data.augment import RandomBatches, default_pad, normalize, strong_augment, weak_augment
from teli.data.datasets import DATASETS, ImageDataset, load_dataset
from teli.data.loader import SSLBatches, SSLData, make_ssl_data
from teli.data.split import Split, split_pool

__all__ = [
    "DATASETS", "ImageDataset", "RandomBatches", "SSLBatches", "SSLData", "Split", "make_ssl_data", "default_pad", "load_dataset", "normalize",
    "split_pool", "strong_augment", "weak_augment",
]
