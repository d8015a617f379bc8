"""Channel-wise activation analysis (the paper's Figures 1-2): tensors in, tensors out.

For one CAS point (or, without CAS, the block where a CAS module would sit), each image gives a vector
of per-channel activations (spatial means of the feature map). From a batch of such vectors:

* :func:`magnitude` — per channel, the sum of its values divided by the number of images in which it
  is *activated* (the paper's magnitude figure);
* :func:`frequency` — per channel, the number of images in which it is activated; a channel is
  activated on an image when its value exceeds ``threshold`` x that image's largest channel value
  (the paper's uniformity figure, threshold 1%);
* :func:`summary` — scalar figures for a table: mean magnitude, the share of channels active per
  image, and a uniformity index (normalised entropy of the activation counts: 1 = every channel is
  activated equally often, 0 = one channel only).

Values after the CAS mask can be negative (the mask is a raw weight row): magnitudes use absolute values
so that a channel flipped negative is not counted as silenced.
"""
from __future__ import annotations

import torch

from .models import CASNet, ForwardResult, PointChannels


@torch.no_grad()
def channel_activations(model: CASNet, x: torch.Tensor, y: torch.Tensor | None = None,
                        mask: str = "pred", batch_size: int = 256) -> ForwardResult:
    """:meth:`CASNet.forward_details` over a large batch, in chunks: final logits and a
    :class:`PointChannels` per CAS point, every tensor concatenated on the CPU as float32."""
    parts = []
    for i in range(0, x.shape[0], batch_size):
        yb = None if y is None else y[i:i + batch_size]
        parts.append(model.forward_details(x[i:i + batch_size], yb, mask))

    def cat(tensors):
        return torch.cat([t.float().cpu() for t in tensors])

    details = []
    for j, first in enumerate(parts[0].details):
        aux = None if first.aux_logits is None else cat([p.details[j].aux_logits for p in parts])
        spatial = [None if getattr(first, f) is None else cat([getattr(p.details[j], f) for p in parts])
                   for f in ("spatial_mask", "spatial_before")]
        details.append(PointChannels(first.name, *(cat([getattr(p.details[j], f) for p in parts])
                                                   for f in ("before", "mask", "after")), aux, *spatial))
    return ForwardResult(cat([p.logits for p in parts]),
                         [d.aux_logits for d in details if d.aux_logits is not None], details)


def activated(values: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """(N, K) bool: channel k is activated on image n if |value| > threshold x the image's max |value|."""
    a = values.abs()
    return a > threshold * a.max(dim=1, keepdim=True).values.clamp_min(1e-12)


def magnitude(values: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """(K,) per-channel sum of |values| over images / number of images where the channel is activated."""
    count = activated(values, threshold).sum(0).clamp_min(1)
    return values.abs().sum(0) / count


def frequency(values: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """(K,) number of images on which each channel is activated."""
    return activated(values, threshold).sum(0)


def uniformity(counts: torch.Tensor) -> float:
    """Normalised entropy of per-channel activation counts, in [0, 1]."""
    c = counts.float().clamp_min(0)
    if c.sum() <= 0 or c.numel() < 2:
        return 0.0
    p = c / c.sum()
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / torch.log(torch.tensor(float(c.numel()))))


def sort_order(reference: torch.Tensor) -> torch.Tensor:
    """Channel order for plotting: descending by the reference (the natural curve, as in the paper)."""
    return torch.argsort(reference, descending=True)


def summary(values: torch.Tensor, threshold: float = 0.01) -> dict[str, float]:
    """Scalar figures of one (N, K) activation batch."""
    act = activated(values, threshold)
    return {
        "mean_magnitude": float(values.abs().mean()),
        "total_magnitude": float(values.abs().sum(1).mean()),
        "active_share": float(act.float().mean()),
        "uniformity": uniformity(act.sum(0)),
    }


def compare(natural: torch.Tensor, adversarial: torch.Tensor, threshold: float = 0.01) -> dict:
    """Natural vs adversarial activations of one CAS point: the curves of both figures, in the paper's
    channel orders, and the summary figures. Each curve is a (K,) tensor."""
    mag_nat, mag_adv = magnitude(natural, threshold), magnitude(adversarial, threshold)
    freq_nat, freq_adv = frequency(natural, threshold), frequency(adversarial, threshold)
    order = sort_order(freq_nat.float() + 1e-6 * mag_nat)  # ties in counts broken by magnitude
    return {
        # magnitude figure: each curve sorted on its own, as the paper draws it
        "magnitude_natural": torch.sort(mag_nat, descending=True).values,
        "magnitude_adversarial": torch.sort(mag_adv, descending=True).values,
        # frequency figure: channels in the natural count's order, adversarial in the same order
        "frequency_order": order,
        "frequency_natural": freq_nat[order],
        "frequency_adversarial": freq_adv[order],
        "summary_natural": summary(natural, threshold),
        "summary_adversarial": summary(adversarial, threshold),
    }
