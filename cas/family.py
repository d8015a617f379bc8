"""The channel-defence family: CAS's relatives that also re-weight features by a learned,
input-dependent mask, written with CAS's contract (:class:`cas.layers.CASOutput`).

Each module takes a feature map ``f`` (N, K, H, W) and returns the masked map, its auxiliary logits and
its mask; how the mask is chosen at test time is the ``mask`` argument of the call, never a flag on the
module, so one instance serves many threads. The three rules mean, for every member:

* ``"pred"``: the defence's own test-time rule, as its authors' code computes it;
* ``"label"``: the rule its training uses with the true label (an oracle, for analysis);
* ``"soft"``: a differentiable relaxation for adaptive attacks, sharpened by a small ``temperature``.

Members (ResNet-18 placements as in their papers; see :data:`DEFENSES`):

* **CIFS** (Yan et al., ICML 2021), on both blocks of the last stage: a probe classifies the block's
  spatial mean (block 0: Linear-Softplus(beta 5)-Linear; block 1: Linear); the mask is the softmax
  over channels of the gradient of the probe's two top logits with respect to the features (their
  spatial sum, which is the gradient with respect to the mean). ``"pred"``: the probe's top two,
  on detached features, as the authors do (no input gradient flows through the mask); ``"label"``:
  the label's logit and the probe's second (their training rule); ``"soft"``: a soft top-2 indicator
  ``sigmoid((z - t) / T)``, ``t`` midway between the second and third logits, on live features, so
  the gradient runs through the probe and its selection. The probe's input gradient is written out
  (for a linear probe it is the weight rows; for the MLP ``W1^T (sigmoid(5 u) * W2^T v)``), which is
  the value the authors get from ``autograd.grad(create_graph=True)`` (checked in the tests) and
  works under ``torch.no_grad``, in inference mode and inside double backpropagation without an inner
  autograd call.
* **EWAS** (Zhang et al., FGCS 2023), between the two blocks of the last stage: an auxiliary linear head
  on the flattened map; the mask is that head's raw weight row reshaped to (K, H, W), element-wise:
  the predicted class's row (``"pred"``), the label's (``"label"`` and training), or the
  softmax(aux / T)-weighted mix of the rows (``"soft"``).
* **FSR** (Kim et al., CVPR 2023), after the last stage: a separation net (three 3x3 convolutions) gives
  an element-wise mask ``m`` by a Gumbel-sigmoid of temperature 0.1, noisy in training mode and the
  deterministic ``sigmoid(a / 0.1)`` otherwise (``"pred"``; FSR's mask never reads a label, so
  ``"label"`` is the same); ``"soft"`` replaces 0.1 by ``T``. The robust part ``f m`` is kept, the
  non-robust part ``f (1 - m)`` is recalibrated by a second net, and the block's output is their sum;
  one auxiliary head classifies the pooled robust part (``aux_logits``) and, for the loss, the
  non-robust and recalibrated parts (``extras``).

Widths scale with the backbone: the CIFS MLP's hidden layer is K/4 and FSR's nets K/8 wide (128 and
64 at the paper's K = 512).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CASModule, CASOutput, check_mask_mode


def _rows(head: nn.Linear, aux: torch.Tensor, y, mask: str, training: bool, temperature: float) -> torch.Tensor:
    """The weight row(s) a mask rule picks (the rule CAS and EWAS share)."""
    weight = head.weight
    if (training and y is not None) or mask == "label":
        if y is None:
            raise ValueError('mask="label" needs the labels y')
        return weight[y]
    if mask == "soft":
        return torch.softmax(aux.float() / temperature, dim=1).to(weight.dtype) @ weight
    return weight[aux.argmax(dim=1)]


class CIFSModule(nn.Module):
    """A CIFS probe on a block's pooled features and its gradient-based channel mask."""

    def __init__(self, channels: int, num_classes: int = 10, probe: str = "linear"):
        super().__init__()
        if probe not in ("linear", "mlp"):
            raise ValueError(f"probe must be 'linear' or 'mlp', got {probe!r}")
        self.channels, self.num_classes, self.probe_kind = channels, num_classes, probe
        if probe == "mlp":
            hidden = max(channels // 4, 1)
            self.hidden = nn.Linear(channels, hidden)
            self.head = nn.Linear(hidden, num_classes)
        else:
            self.head = nn.Linear(channels, num_classes)

    def probe(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.probe_kind == "mlp":
            return self.head(F.softplus(self.hidden(pooled), beta=5))
        return self.head(pooled)

    def probe_gradient(self, pooled: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """d(v . probe(p)) / dp, one row per image (v: (N, classes) weights on the logits)."""
        g = v.to(self.head.weight.dtype) @ self.head.weight  # (N, hidden or K)
        if self.probe_kind == "mlp":
            g = (torch.sigmoid(5 * self.hidden(pooled)) * g) @ self.hidden.weight
        return g

    def forward(self, f, y=None, mask: str = "pred", temperature: float = 1.0) -> CASOutput:
        check_mask_mode(mask)
        pooled = f.mean(dim=(2, 3))
        aux = self.probe(pooled)
        soft = mask == "soft" and not (self.training and y is not None)
        source = pooled if soft else pooled.detach()
        z = aux if soft else self.probe(source)
        if soft:
            top3 = z.float().topk(min(3, z.shape[1]), dim=1).values
            t = (top3[:, 1] + top3[:, -1]) / 2
            v = torch.sigmoid((z.float() - t[:, None]) / temperature)
        else:
            second = z.topk(2, dim=1).indices
            first = y if (self.training and y is not None) or mask == "label" else second[:, 0]
            if first is None:
                raise ValueError('mask="label" needs the labels y')
            v = F.one_hot(first, z.shape[1]) + F.one_hot(second[:, 1], z.shape[1])
        m = torch.softmax(self.probe_gradient(source, v).float(), dim=1).to(f.dtype)
        return CASOutput(f * m[:, :, None, None], aux, pooled, m)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}, probe={self.probe_kind}"


class EWASModule(nn.Module):
    """An auxiliary linear head on the flattened feature map; its weight row is an element-wise mask."""

    def __init__(self, channels: int, num_classes: int = 10, spatial: tuple[int, int] = (4, 4)):
        super().__init__()
        self.channels, self.num_classes, self.spatial = channels, num_classes, tuple(spatial)
        self.head = nn.Linear(channels * spatial[0] * spatial[1], num_classes)

    def forward(self, f, y=None, mask: str = "pred", temperature: float = 1.0) -> CASOutput:
        check_mask_mode(mask)
        n, k, h, w = f.shape
        if (h, w) != self.spatial:
            raise ValueError(f"EWAS was built for {self.spatial[0]}x{self.spatial[1]} feature maps, got {h}x{w}")
        aux = self.head(f.reshape(n, -1))
        m = _rows(self.head, aux, y, mask, self.training, temperature).to(f.dtype).view(n, k, h, w)
        out = f * m
        return CASOutput(out, aux, f.mean(dim=(2, 3)), m.mean(dim=(2, 3)), out.mean(dim=(2, 3)), m)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}, spatial={self.spatial}"


def _three_convs(cin: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, cin, 3, 1, 1, bias=False))


class FSRModule(nn.Module):
    """Feature separation (Gumbel-sigmoid mask) and recalibration of the non-robust part."""

    P = 1e-8  # the authors' guard against log(0)

    def __init__(self, channels: int, num_classes: int = 10, tau: float = 0.1):
        super().__init__()
        self.channels, self.num_classes, self.tau = channels, num_classes, tau
        hidden = max(channels // 8, 1)
        self.separation = _three_convs(channels, hidden)
        self.recalibration = _three_convs(channels, hidden)
        self.head = nn.Linear(channels, num_classes)

    def gate(self, a: torch.Tensor, mask: str, temperature: float) -> torch.Tensor:
        """The Gumbel-sigmoid of ``sigmoid(a)``: the first of the two-way softmax the authors compute."""
        s, p = torch.sigmoid(a.float()), self.P
        logit = torch.log(s + p) - torch.log(1 - s + p)
        tau = temperature if mask == "soft" else self.tau
        if self.training:  # noisy: one Gumbel draw for each side (their GumbelSigmoid)
            g = [-torch.log(-torch.log(torch.rand_like(logit) + p) + p) for _ in range(2)]
            logit = logit + g[0] - g[1]
        return torch.sigmoid(logit / (tau + p)).to(a.dtype)

    def forward(self, f, y=None, mask: str = "pred", temperature: float = 1.0) -> CASOutput:
        check_mask_mode(mask)
        m = self.gate(self.separation(f), mask, temperature)
        robust, nonrobust = f * m, f * (1 - m)
        recalibrated = nonrobust + self.recalibration(nonrobust) * (1 - m)
        out = robust + recalibrated
        head = self.head
        extras = {"nonrobust": head(nonrobust.mean(dim=(2, 3))), "recalibrated": head(recalibrated.mean(dim=(2, 3)))}
        return CASOutput(out, head(robust.mean(dim=(2, 3))), f.mean(dim=(2, 3)), m.mean(dim=(2, 3)),
                         out.mean(dim=(2, 3)), m, extras)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}, tau={self.tau}"


@dataclass(frozen=True)
class Defense:
    """A member of the family: how a ResNet-18 gets it and how it trains."""

    name: str
    label: str  # the name a page shows
    points: tuple[str, ...]  # the ResNet-18 units it follows
    aux_weight: float  # weight of the auxiliary losses in training (its authors' value)
    element_wise: bool  # an element-wise mask (else per channel)
    description: str


DEFENSES: dict[str, Defense] = {d.name: d for d in [
    Defense("cas", "CAS", ("layer4_0", "layer4_1"), 2.0, False,
            "Channel-wise Activation Suppressing (Bai et al., ICLR 2021)"),
    Defense("cifs", "CIFS", ("layer4_0", "layer4_1"), 2.0, False,
            "Channel-wise Importance-based Feature Selection (Yan et al., ICML 2021)"),
    Defense("ewas", "EWAS", ("layer4_0",), 0.01, True,
            "Element-Wise Activation Scaling (Zhang et al., FGCS 2023)"),
    Defense("fsr", "FSR", ("layer4_1",), 1.0, True,
            "Feature Separation and Recalibration (Kim et al., CVPR 2023)"),
]}


def check_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defence {name!r}; choose from {', '.join(DEFENSES)}")
    return DEFENSES[name]


def build_module(defense: str, point_index: int, channels: int, num_classes: int, spatial: tuple[int, int]):
    """The module ``defense`` puts at its ``point_index``-th point."""
    check_defense(defense)
    if defense == "cifs":
        return CIFSModule(channels, num_classes, "mlp" if point_index == 0 else "linear")
    if defense == "ewas":
        return EWASModule(channels, num_classes, spatial)
    if defense == "fsr":
        return FSRModule(channels, num_classes)
    return CASModule(channels, num_classes)
