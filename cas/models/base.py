"""Shared machinery of every backbone: input normalisation, CAS insertion points, the forwards.

A backbone is a flat sequence of named units (``self.units``, names such as ``layer4_1``); a CAS
module may follow any unit (``self.cas``, keyed by unit name). The same code path runs every forward, so ``model(x)``,
:meth:`forward_aux` and :meth:`forward_details` never disagree.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..family import build_module, check_defense
from ..layers import check_mask_mode

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class PointChannels(NamedTuple):
    """Per-channel activations at one CAS point (or at the last block of a model without CAS)."""

    name: str
    before: torch.Tensor  # spatial mean of the block output, before the mask (N, K)
    mask: torch.Tensor  # channel mask (N, K); all ones where there is no CAS module
    after: torch.Tensor  # spatial mean after the mask (N, K)
    aux_logits: torch.Tensor | None  # the CAS head's logits, None without CAS
    spatial_mask: torch.Tensor | None = None  # an element-wise mask (N, K, H, W) (EWAS, FSR); None per channel
    spatial_before: torch.Tensor | None = None  # with an element-wise mask: the feature map it multiplies


class ForwardResult(NamedTuple):
    logits: torch.Tensor
    aux_logits: list[torch.Tensor]
    details: list[PointChannels]
    extras: list[dict] | tuple = ()  # per module, further named logits its defence trains on (FSR)


class CASNet(nn.Module):
    """Base class: subclasses fill ``self.units`` (nn.ModuleDict, in order) and ``self.classifier``.

    ``arch`` and ``arch_kwargs`` record how to rebuild the model (see :mod:`cas.checkpoint`).
    ``normalize=False`` makes the model read raw [0, 1] pixels (no CIFAR-10 mean/std), as models
    converted from code that trained without normalisation do. A unit listed in ``self.inner_cas``
    applies its CAS module itself, inside the unit (``unit(h, cas, y, mask, temperature)`` returns
    ``(h, CASOutput)``); every other CAS module follows its unit.
    """

    arch: str = ""

    def __init__(self, num_classes: int = 10, normalize: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.normalize = normalize
        self.inner_cas: set[str] = set()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), persistent=False)
        self.units = nn.ModuleDict()
        self.cas = nn.ModuleDict()
        self.arch_kwargs: dict = {}
        self.defense = "cas"  # which member of the channel-defence family its modules are (cas.family)

    # -- construction helpers -------------------------------------------------------------------
    def _add_cas(self, points, channels_of: dict[str, int], defense: str = "cas",
                 spatial_of: dict[str, tuple[int, int]] | None = None) -> None:
        check_defense(defense)
        self.defense = defense
        for i, pos in enumerate(points):
            if pos not in channels_of:
                raise ValueError(f"unknown CAS point {pos!r}; choose from {sorted(channels_of)}")
            spatial = (spatial_of or {}).get(pos, (1, 1))
            self.cas[pos] = build_module(defense, i, channels_of[pos], self.num_classes, spatial)

    @property
    def has_cas(self) -> bool:
        return len(self.cas) > 0

    @property
    def cas_points(self) -> list[str]:
        return list(self.cas.keys())

    # -- forwards ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, mask: str = "pred",
                return_aux: bool = False, temperature: float = 1.0, return_extras: bool = False):
        """``model(x)`` -> logits. With ``return_aux=True`` -> (logits, [aux logits]), and with
        ``return_extras=True`` also the modules' further logits (a dict each, see :mod:`cas.family`).
        ``temperature`` sets the softmax temperature of ``mask="soft"`` (see :mod:`cas.layers`).

        The keyword form exists so that wrappers such as DistributedDataParallel, which only see
        ``forward``, can run the CAS training forward; prefer :meth:`forward_aux` in user code.
        """
        res = self._run(x, y, mask, details=False, temperature=temperature)
        if return_extras:
            return res.logits, res.aux_logits, res.extras
        return (res.logits, res.aux_logits) if return_aux else res.logits

    def forward_aux(self, x, y=None, mask: str = "pred", temperature: float = 1.0):
        """(final logits, [auxiliary logits of each CAS module]).

        Training mode with ``y``: every mask is ``y``'s row. Otherwise ``mask`` picks the row:
        ``"pred"`` (paper), ``"label"`` (needs ``y``) or ``"soft"`` (differentiable mix).
        """
        return self.forward(x, y, mask, return_aux=True, temperature=temperature)

    def forward_details(self, x, y=None, mask: str = "pred", temperature: float = 1.0) -> ForwardResult:
        """Logits, auxiliary logits and a :class:`PointChannels` per CAS module (or, without CAS,
        for the point where a CAS module would sit)."""
        return self._run(x, y, mask, details=True, temperature=temperature)

    def _run(self, x, y, mask, details: bool, temperature: float = 1.0) -> ForwardResult:
        check_mask_mode(mask)
        if not temperature > 0:
            raise ValueError(f"the soft mask's temperature must be positive, got {temperature}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype) if self.normalize else x
        aux_list: list[torch.Tensor] = []
        extras: list[dict] = []
        detail_list: list[PointChannels] = []
        for name, unit in self.units.items():
            f = None
            if name in self.inner_cas:
                h, o = unit(h, self.cas[name], y, mask, temperature)
            else:
                h = unit(h)
                if name in self.cas:
                    f, o = h, self.cas[name](h, y, mask, temperature)
                    h = o.out
            if name in self.cas:
                aux_list.append(o.aux_logits)
                extras.append(o.extras or {})
                if details:
                    after = o.pooled * o.mask if o.after is None else o.after
                    detail_list.append(PointChannels(name, o.pooled, o.mask, after, o.aux_logits, o.spatial_mask,
                                                     f if o.spatial_mask is not None else None))
            elif details and not self.has_cas and name == self._report_point:
                pooled = h.mean(dim=(2, 3))
                detail_list.append(PointChannels(name, pooled, torch.ones_like(pooled), pooled, None))
        logits = self.classifier(h)
        return ForwardResult(logits, aux_list, detail_list, extras)

