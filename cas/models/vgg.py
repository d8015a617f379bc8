"""VGG-16 with batch norm for CIFAR, with optional CAS modules on the last stage's convolutions.

``head="linear"`` (default) ends in one linear layer; ``head="mlp"`` in two 512-unit hidden layers with
batch norm, and ``conv_bias=True`` gives the convolutions biases: the layout of the CAS authors'
VGG-16, which :mod:`cas.convert` reads."""
from __future__ import annotations

from torch import nn

from .base import CASNet

_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(CASNet):
    arch = "vgg16"
    DEFAULT_CAS = ("conv5_1", "conv5_2", "conv5_3")

    def __init__(self, num_classes: int = 10, width: int = 64, cas: bool = True, cas_points=None,
                 normalize: bool = True, conv_bias: bool = False, head: str = "linear"):
        super().__init__(num_classes, normalize)
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        channels_of = {}
        cin = 3
        for s, (base, n) in enumerate(_STAGES, start=1):
            cout = base * width // 64
            for i in range(1, n + 1):
                name = f"conv{s}_{i}"
                self.units[name] = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=conv_bias),
                                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
                channels_of[name] = cout
                cin = cout
            self.units[f"pool{s}"] = nn.MaxPool2d(2)
        if head == "linear":
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                            nn.Linear(512, num_classes))
        points = list(cas_points or self.DEFAULT_CAS) if cas else []
        self._add_cas(points, channels_of)
        self._report_point = points[-1] if points else "conv5_3"
        self.arch_kwargs = {"num_classes": num_classes, "width": width, "cas": cas,
                            "cas_points": points or None, "normalize": normalize, "conv_bias": conv_bias,
                            "head": head}
