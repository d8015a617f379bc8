"""What a gradient attack maximises.

An objective is ``objective(model, x_adv, y, target, settings) -> (loss, logits)``: ``loss`` holds one
value per image (the attack ascends its sum), and ``logits`` are the real model's logits for
``x_adv`` when the objective's forward *is* the real model (so the attack can judge the point for
free), or None when the gradient comes from another forward (CAS-adaptive attacks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image attack margin: > 0 means the attack succeeded (misclassified, or hit the target).
    Untargeted: ``max other logit - true logit``; targeted: ``target logit - max other``."""
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, cls[:, None], float("-inf"))
    best_other = others.max(1).values
    return (best_other - own) if target is None else (own - best_other)


def cross_entropy_ascent(logits, y, target):
    """The per-image cross-entropy to push up (untargeted), or minus the target's (targeted)."""
    return -F.cross_entropy(logits, target, reduction="none") if target is not None else \
        F.cross_entropy(logits, y, reduction="none")


def obj_ce(model, x, y, target, s):
    """Cross-entropy of the final logits (FGSM, PGD)."""
    logits = model(x)
    return cross_entropy_ascent(logits.float(), y, target), logits


def obj_cw(model, x, y, target, s):
    """The Carlini-Wagner margin of the final logits (CW-Linf)."""
    logits = model(x)
    return margin(logits.float(), y, target), logits


def _joint(model, x, y, target, s, mask):
    logits, aux = model.forward_aux(x, mask=mask)
    loss = cross_entropy_ascent(logits.float(), y, target)
    if aux:
        loss = loss + s.aux_weight * torch.stack([cross_entropy_ascent(a.float(), y, target) for a in aux]).mean(0)
    return loss, logits if mask == "pred" else None


def obj_joint(model, x, y, target, s):
    """The authors' attack loss: final loss + aux_weight x mean auxiliary loss, real (argmax) masks."""
    return _joint(model, x, y, target, s, "pred")


def obj_soft(model, x, y, target, s):
    """The same joint loss, but every CAS mask is the softmax-weighted mix of its head's rows, so the
    gradient sees how the mask would switch; the real model judges the points (BPDA-style)."""
    return _joint(model, x, y, target, s, "soft")
