"""Small models whose shape follows the input: a CNN family (width x depth) and an MLP.

Diverse teachers need different shapes; both adapt to any channel count and image size.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """`depth` blocks of two 3x3 conv-BN-ReLU layers; channels double each block (width, 2*width, ...);
    a 2x2 max-pool after each block while the feature map is at least 2x2; global average pool."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for block in range(depth):
            c_out = width * 2**block
            layers += conv_bn_relu(c_in, c_out) + conv_bn_relu(c_out, c_out)
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten, then `depth` Linear-BN-ReLU layers of `width` units: a teacher that sees pixels, not patches."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 256, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(d_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            d_in = width
        layers += [nn.Dropout(dropout), nn.Linear(d_in, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
