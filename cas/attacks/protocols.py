"""The CAS authors' own evaluation attacks: what the paper's numbers were measured with.

Bai et al. (ICLR 2021) evaluated their CAS models with ``_pgd_whitebox`` and ``_cw_whitebox`` in
``Trades/pgd_attack_cifar10_cas.py`` of their public code (bymavis/CAS_ICLR2021), called with
``beta = 2``. Both are re-written here from a reading of that file, with our calling convention
``fn(model, x, y, settings=None, progress=None, **kw) -> x_adv``. Read exactly, their protocol is:

* schedule: Linf, eps 0.031, 20 steps of 0.003 (their defaults; note 0.031 < 8/255 and
  20 x 0.003 = 0.06, so the corners of the budget are barely reached);
* start: ``x + U(-eps, eps)``, *not* clipped to [0, 1] before the first gradient (the first
  gradient is taken at a point that may lie outside the image range; every later point is
  projected to the ball and clipped to [0, 1]);
* masks: the model runs in eval mode, where each CAS block multiplies its features by the row of
  its own auxiliary head's argmax (the label the code passes in is ignored in eval mode): our
  ``mask="pred"``, the real model's forward;
* update: ``x <- clip01(x + clip_eps(x + step * sign(grad) - x0))``, the sign of the gradient of
  the *batch* loss (mean cross-entropy, so every image's gradient is scaled by 1/N, which the sign
  ignores);
* PGD loss: ``CE(final, y) + beta * mean over CAS heads of CE(aux, y)``, each CE averaged over
  the batch, the auxiliary mean taken over heads (sum divided by the number of heads), beta = 2;
* CW loss: per head ``-relu(sum_i z_{i,y_i} - sum_i max_{j != y_i} z_{i,j})``: the true and the best
  wrong logits are each summed over the *batch* before the relu, so the clip at 0 acts on the batch's
  total margin, not per image. While the batch as a whole is still mostly classified correctly (the
  usual case on a robust model) the relu never acts and every image, even one already misclassified,
  is pushed along its unclipped margin ``z_y - max_{j != y} z_j``; a head's gradient vanishes for the
  whole batch only once its summed margin is negative. Final head + beta * (mean over the CAS heads),
  beta = 2. This makes the result depend on the batch: :func:`authors_cw` applies the clip to
  consecutive groups of ``AUTHORS_BATCH`` (200, their test batch size) images of what it is given,
  so the evaluator's own batching changes nothing as long as its batches are multiples of 200;
* result: the *last iterate* is what they classify and count (no best point is kept), judged by
  the real model (argmax masks) on the final logits.

There are no restarts, no early stop and no targeted variant. The computation is fp32 throughout
(``settings.amp`` is ignored: these functions reproduce a protocol, not a fast attack), and like
every attack here they never change the model's mode: call ``model.eval()`` first, as their
evaluation did. On a model without CAS heads the auxiliary term is absent (their code would
divide by zero): the attack is PGD on the final cross-entropy (or margin) alone.

Both are attacks of the registry (``cas.ATTACKS``: ``authors_pgd`` and ``authors_cw``), kept apart from the
project's own ``joint_pgd``, which uses the same loss with the evaluator's larger steps and keeps each
image's best point.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .engine import new_generator
from .settings import AttackSettings

# their exact schedule (argparse defaults of the evaluation script, called with beta = 2)
AUTHORS_SCHEDULE = {"eps": 0.031, "steps": 20, "step_size": 0.003, "random_start": True, "aux_weight": 2.0}
AUTHORS_SETTINGS = AttackSettings(**AUTHORS_SCHEDULE)
AUTHORS_BATCH = 200  # their evaluation's test batch size (``--test-batch-size``), which the CW loss depends on


def _resolve(settings: AttackSettings | None, kw: dict) -> AttackSettings:
    s = settings or AUTHORS_SETTINGS
    if kw:
        s = replace(s, **kw)
    s = s.validated()
    if s.norm != "linf":
        raise ValueError("the authors' protocol is an Linf attack")
    if s.target is not None:
        raise ValueError("the authors' protocol is untargeted; leave the target empty")
    if isinstance(s.eps, torch.Tensor) or isinstance(s.step_size, torch.Tensor):
        raise TypeError("the authors' protocol takes one budget for all images")
    return s


def _heads(model, x):
    """(final logits, [auxiliary logits]) of the real model (argmax masks, as in eval mode)."""
    if hasattr(model, "forward_aux"):
        logits, aux = model.forward_aux(x, mask="pred")
        return logits, list(aux)
    return model(x), []


def _ce_loss(logits, y):
    return F.cross_entropy(logits, y)  # batch mean, as nn.CrossEntropyLoss()


def _cw_loss(logits, y, batch: int = AUTHORS_BATCH):
    """``-relu(sum of z_y - max_{j != y} z_j over a batch)`` summed over the batches of ``batch``
    images: their code sums the true and the best wrong logits over the batch *before* the relu."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    per_image = own - others.max(1).values
    return -F.relu(torch.stack([c.sum() for c in per_image.split(batch)])).sum()




def _uniform_start(x, eps: float, s: AttackSettings) -> torch.Tensor:
    """U(-eps, eps) offsets: from one generator seeded with ``s.seed``, or, with one seed per image,
    image i's from its own generator (the start a one-image attack with that seed draws)."""
    if not s.per_image_seeds:
        return torch.empty_like(x).uniform_(-eps, eps, generator=new_generator(x.device, s.seed))
    if len(s.seed) != x.shape[0]:
        raise ValueError(f"got {len(s.seed)} per-image seeds for {x.shape[0]} images")
    return torch.cat([torch.empty_like(x[i:i + 1]).uniform_(-eps, eps, generator=new_generator(x.device, seed))
                      for i, seed in enumerate(s.seed)])


def _authors_loop(model, x, y, s: AttackSettings, head_loss, progress=None, clip_start: bool = False):
    x = x.detach().float()
    y = y.to(x.device)
    eps, step = float(s.eps), float(s.step_size)
    x_adv = x.clone()
    if s.random_start:  # the CAS authors do not clip the start to [0, 1]; EWAS's code does
        x_adv = x_adv + _uniform_start(x, eps, s)
        if clip_start:
            x_adv = x_adv.clamp(0, 1)
    for i in range(s.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits, aux = _heads(model, x_adv)
            loss = head_loss(logits.float(), y)
            if aux and s.aux_weight:
                loss = loss + s.aux_weight * (sum(head_loss(a.float(), y) for a in aux) / len(aux))
            (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv.detach() + step * grad.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
        if progress:
            progress(i + 1, s.steps)
    return x_adv.detach()


def authors_pgd(model, x, y, settings: AttackSettings | None = None, progress=None, **kw):
    """The CAS authors' PGD-20 evaluation (``_pgd_whitebox`` with beta 2): what the paper's PGD
    numbers were measured with. Final CE + aux_weight x mean auxiliary CE, argmax masks, signed
    steps, last iterate returned. ``settings`` default to their schedule (eps 0.031, 20 steps of
    0.003, uniform random start unclipped, aux_weight 2); ``seed`` seeds the random start (one seed,
    or one per image)."""
    return _authors_loop(model, x, y, _resolve(settings, kw), _ce_loss, progress)


def authors_cw(model, x, y, settings: AttackSettings | None = None, progress=None, batch: int = AUTHORS_BATCH,
               **kw):
    """The CAS authors' CW-Linf evaluation (``_cw_whitebox`` with beta 2): what the paper's CW
    numbers were measured with. The same schedule as :func:`authors_pgd` on the loss
    ``-relu(sum over a batch of z_y - max_{j!=y} z_j)`` of the final head + aux_weight x its mean
    over the CAS heads (groups of ``AUTHORS_BATCH`` images, see the module text), last iterate
    returned."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive whole number of images, got {batch!r}")
    return _authors_loop(model, x, y, _resolve(settings, kw), lambda z, t: _cw_loss(z, t, batch), progress)


def _cw50_loss(logits, y):
    """``-relu(z_y - max_{j != y} z_j + 50)`` summed over the images: the CW loss with confidence 50
    that the CIFS, EWAS and FSR evaluations use (clipped per image, unlike the CAS authors')."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return -F.relu(own - others.max(1).values + 50).sum()


@dataclass(frozen=True)
class Protocol:
    """One attack of a relative's own evaluation (:mod:`cas.family`), as its authors' code runs it."""

    name: str  # registry name, e.g. "cifs_pgd20"
    defense: str  # the family member whose paper used it
    label: str  # e.g. "CIFS authors' PGD-20"
    eps: float
    steps: int
    step_size: float
    random_start: bool
    clip_start: bool  # the random start clipped to [0, 1] before the first gradient
    loss: str  # "ce" (cross-entropy, batch mean) or "cw50" (margin with confidence 50)
    aux_weight: float  # x the mean auxiliary loss, added to the final head's
    source: str  # where their code runs it

    @property
    def settings(self) -> AttackSettings:
        return AttackSettings(eps=self.eps, steps=self.steps, step_size=self.step_size,
                              random_start=self.random_start, aux_weight=self.aux_weight)

    def __call__(self, model, x, y, settings: AttackSettings | None = None, progress=None, **kw):
        s = _resolve(settings or self.settings, kw)
        head_loss = _ce_loss if self.loss == "ce" else _cw50_loss
        return _authors_loop(model, x, y, s, head_loss, progress, clip_start=self.clip_start)


_E8, _E31 = 8 / 255, 0.031
# CIFS (HanshuYAN/CIFS, CIFAR10_Res18_CIFS_test.py): advertorch FGSM / LinfPGDAttack without a random
# start, steps of 0.1 eps, on the joint loss final + 2 x mean probe loss, last iterate;
# FSR (wkim97/FSR, test.py): the same schedules on the final head alone, mask deterministic (our "pred");
# EWAS (ieslab-ynu/EWAS, white_box_robust_eval.py): eps 0.031, uniform start clipped to [0, 1], FGSM one
# step of eps, PGD-20 and CW-30 steps of eps / 4, final + 0.01 x the auxiliary head's loss
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("cifs_fgsm", "cifs", "CIFS authors' FGSM", _E8, 1, _E8, False, False, "ce", 2.0,
             "CIFAR10_Res18_CIFS_test.py"),
    Protocol("cifs_pgd20", "cifs", "CIFS authors' PGD-20", _E8, 20, 0.1 * _E8, False, False, "ce", 2.0,
             "CIFAR10_Res18_CIFS_test.py"),
    Protocol("cifs_pgd100", "cifs", "CIFS authors' PGD-100", _E8, 100, 0.1 * _E8, False, False, "ce", 2.0,
             "CIFAR10_Res18_CIFS_test.py"),
    Protocol("cifs_cw30", "cifs", "CIFS authors' CW-30", _E8, 30, 0.1 * _E8, False, False, "cw50", 2.0,
             "CIFAR10_Res18_CIFS_test.py"),
    Protocol("ewas_fgsm", "ewas", "EWAS authors' FGSM", _E31, 1, _E31, True, True, "ce", 0.01,
             "white_box_robust_eval.py"),
    Protocol("ewas_pgd20", "ewas", "EWAS authors' PGD-20", _E31, 20, _E31 / 4, True, True, "ce", 0.01,
             "white_box_robust_eval.py"),
    Protocol("ewas_cw30", "ewas", "EWAS authors' CW-30", _E31, 30, _E31 / 4, True, True, "cw50", 0.01,
             "white_box_robust_eval.py"),
    Protocol("fsr_fgsm", "fsr", "FSR authors' FGSM", _E8, 1, _E8, False, False, "ce", 0.0, "test.py"),
    Protocol("fsr_pgd20", "fsr", "FSR authors' PGD-20", _E8, 20, 0.1 * _E8, False, False, "ce", 0.0, "test.py"),
    Protocol("fsr_pgd100", "fsr", "FSR authors' PGD-100", _E8, 100, 0.1 * _E8, False, False, "ce", 0.0, "test.py"),
    Protocol("fsr_cw30", "fsr", "FSR authors' CW-30", _E8, 30, 0.1 * _E8, False, False, "cw50", 0.0, "test.py"),
]}


# registry data: one entry per attack, in the fields of cas.attacks.AttackSpec (knobs: the iterative ones
# without the target). ``gradient`` is False because these take one budget for all images (no per-image
# eps curves, no bf16 path); ``strength`` is None: a last-iterate attack is not ranked against PGD.
__all__ = ["AUTHORS_BATCH", "AUTHORS_SCHEDULE", "AUTHORS_SETTINGS", "PROTOCOLS", "Protocol", "authors_cw",
           "authors_pgd"]
