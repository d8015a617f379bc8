"""CIFAR ResNet-18 (3x3 stem, no max-pool) with optional CAS modules."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..family import check_defense
from .base import CASNet


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(CASNet):
    """ResNet-18 for 32x32 inputs. ``width`` is the first stage's channel count (64 in the paper);
    stages have width, 2x, 4x and 8x channels. CAS modules follow the blocks named in
    ``cas_points`` (default: both blocks of the last stage, after the residual add and ReLU).
    ``defense`` picks the member of the channel-defence family (:data:`cas.family.DEFENSES`: ``cas``,
    ``cifs``, ``ewas``, ``fsr``) and with it the default points, for 32x32 inputs."""

    arch = "resnet18"
    DEFAULT_CAS = ("layer4_0", "layer4_1")

    def __init__(self, num_classes: int = 10, width: int = 64, cas: bool = True,
                 cas_points=None, normalize: bool = True, defense: str = "cas"):
        super().__init__(num_classes, normalize)
        if width < 1:
            raise ValueError("width must be a positive integer")
        channels_of, spatial_of = {}, {"stem": (32, 32)}
        self.units["stem"] = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                           nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        channels_of["stem"] = width
        cin = width
        for stage in range(4):
            cout = width * 2 ** stage
            for i in range(2):
                name = f"layer{stage + 1}_{i}"
                self.units[name] = BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1)
                channels_of[name] = cout
                spatial_of[name] = (32 // 2 ** stage,) * 2
                cin = cout
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        points = list(cas_points or check_defense(defense).points) if cas else []
        self._add_cas(points, channels_of, defense, spatial_of)
        self._report_point = points[-1] if points else "layer4_1"
        self.arch_kwargs = {"num_classes": num_classes, "width": width, "cas": cas,
                            "cas_points": points or None, "normalize": normalize}
        if cas and defense != "cas":  # cards of CAS models stay as they were
            self.arch_kwargs["defense"] = defense
