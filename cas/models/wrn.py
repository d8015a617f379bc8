"""WideResNet (pre-activation) for CIFAR; WRN-34-10 by default, with optional CAS modules."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import CASNet


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x, cas=None, y=None, mask="pred", temperature=1.0):
        """``block(x)``; with a CAS module ``cas``, the module masks the residual branch after the
        first BN-ReLU (the CAS authors' WRN) and the call returns ``(out, CASOutput)``."""
        o = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        c = cas(o, y, mask, temperature) if cas is not None else None
        o = self.conv1(o if c is None else c.out)
        o = self.conv2(F.relu(self.bn2(o))) + shortcut
        return o if c is None else (o, c)


class WideResNet(CASNet):
    """WRN-depth-widen (registry name ``wrn``). CAS (default) on the last unit of the third stage and
    after the final BN-ReLU, as in the paper. ``cas_in_branch=True`` puts the CAS module of a block
    point inside the block, on its residual branch after the first BN-ReLU, where the CAS authors'
    code has it (:mod:`cas.convert`); by default it follows the block."""

    arch = "wrn"

    def __init__(self, num_classes: int = 10, depth: int = 34, widen_factor: int = 10, cas: bool = True,
                 cas_points=None, normalize: bool = True, cas_in_branch: bool = False):
        super().__init__(num_classes, normalize)
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        channels_of = {}
        self.units["stem"] = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        channels_of["stem"] = widths[0]
        cin = widths[0]
        for s in range(3):
            for i in range(n):
                name = f"block{s + 1}_{i}"
                self.units[name] = PreActBlock(cin, widths[s + 1], (1 if s == 0 else 2) if i == 0 else 1)
                channels_of[name] = cin = widths[s + 1]
        self.units["final"] = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        channels_of["final"] = cin
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        default = (f"block3_{n - 1}", "final")
        points = list(cas_points or default) if cas else []
        if cas_in_branch:  # the module sees the block's input channels
            channels_of.update({f"block{s + 1}_{i}": widths[s + 1] if i else widths[s] for s in range(3)
                                for i in range(n)})
            self.inner_cas = {p for p in points if p.startswith("block")}
        self._add_cas(points, channels_of)
        self._report_point = points[-1] if points else "final"
        self.arch_kwargs = {"num_classes": num_classes, "depth": depth, "widen_factor": widen_factor,
                            "cas": cas, "cas_points": points or None, "normalize": normalize,
                            "cas_in_branch": cas_in_branch}


def wrn34_10(**kwargs) -> WideResNet:
    """WRN-34-10, the paper's WideResNet: its depth and width are part of its name, so other values
    are refused (a card saying "wrn34_10" must describe a WRN-34-10)."""
    for key, fixed in (("depth", 34), ("widen_factor", 10)):
        if kwargs.get(key, fixed) != fixed:
            raise ValueError(f"wrn34_10 has {key} {fixed}, got {kwargs[key]}; use the architecture "
                             "'wrn' for other depths and widths")
    model = WideResNet(**kwargs)
    model.arch = "wrn34_10"
    return model
