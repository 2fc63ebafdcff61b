"""CIFAR-style ResNet-18 and VGG-11/13: the original TELI teacher pairs, for any channels and size."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

# torchvision's VGG layer lists ("M" = max-pool); its builder fixes 3 input channels, so the
# 15-line builder below takes any channel count and skips pools once the map is 1x1.
VGG_LAYERS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, layout: list, in_channels: int, num_classes: int, image_size: int, width_scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for item in layout:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            c_out = max(8, int(item * width_scale))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cifar_resnet18(in_channels: int, num_classes: int, width: int = 64) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool); `width`
    scales every stage (64 is the standard network)."""
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    if width != 64:  # rebuild the stages thinner; ResNet reads the running width from `inplanes`
        net.inplanes = width
        net.layer1 = net._make_layer(BasicBlock, width, 2)
        net.layer2 = net._make_layer(BasicBlock, width * 2, 2, stride=2)
        net.layer3 = net._make_layer(BasicBlock, width * 4, 2, stride=2)
        net.layer4 = net._make_layer(BasicBlock, width * 8, 2, stride=2)
        net.fc = nn.Linear(width * 8, num_classes)
        net.bn1 = nn.BatchNorm2d(width)
    net.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
