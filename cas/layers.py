"""The Channel-wise Activation Suppressing (CAS) module.

A CAS module sits after a block of a network. It averages the block's feature map over space,
classifies that vector with an auxiliary linear head, and multiplies the feature map channel-wise
by one row of the head's weight matrix:

* training (``module.training`` and a label ``y`` given): the row of the true class;
* otherwise, chosen by the ``mask`` argument of the call:
  ``"pred"``  the row of the head's own predicted class (the paper's test-time rule),
  ``"label"`` the row of ``y`` (an "oracle" mask, for analysis),
  ``"soft"``  the softmax-weighted mix of all rows, ``softmax(aux_logits / temperature) @ W``, a
  differentiable stand-in for ``"pred"`` that adaptive attacks use to see through the argmax (a
  small temperature stays close to the argmax row, a large one mixes all rows evenly).

The mask is the raw weight row (no sigmoid, no normalisation), and nothing is detached, as in the
paper. Everything the module computes is returned; nothing is stored on it, so one instance can be
shared by many threads.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

MASK_MODES = ("pred", "label", "soft")


class CASOutput(NamedTuple):
    """What a module of the channel-defence family returns (CAS here; CIFS, EWAS and FSR in
    :mod:`cas.family`)."""

    out: torch.Tensor  # masked feature map (N, K, H, W): what the network runs on with
    aux_logits: torch.Tensor  # auxiliary logits from the unmasked features (N, classes)
    pooled: torch.Tensor  # per-channel spatial mean before the mask (N, K)
    mask: torch.Tensor  # the channel mask applied (N, K); for an element-wise mask its spatial mean
    after: torch.Tensor | None = None  # per-channel spatial mean of ``out``; None: ``pooled * mask``
    spatial_mask: torch.Tensor | None = None  # an element-wise mask (N, K, H, W); None for a channel mask
    extras: dict | None = None  # further named logits a defence trains on (FSR's non-robust and recalibrated parts)


def check_mask_mode(mask: str) -> None:
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")


class CASModule(nn.Module):
    """Auxiliary classifier on the global-average-pooled features + channel-wise mask."""

    def __init__(self, channels: int, num_classes: int = 10):
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.head = nn.Linear(channels, num_classes)

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None, mask: str = "pred",
                temperature: float = 1.0) -> CASOutput:
        check_mask_mode(mask)
        pooled = f.mean(dim=(2, 3))
        aux = self.head(pooled)
        weight = self.head.weight  # (classes, K)
        if self.training and y is not None:
            m = weight[y]
        elif mask == "label":
            if y is None:
                raise ValueError('mask="label" needs the labels y')
            m = weight[y]
        elif mask == "soft":
            m = torch.softmax(aux.float() / temperature, dim=1).to(weight.dtype) @ weight
        else:
            m = weight[aux.argmax(dim=1)]
        m = m.to(f.dtype)
        return CASOutput(f * m[:, :, None, None], aux, pooled, m)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}"
