"""Projected gradient ascent (PGD, Madry et al. 2018), the engine of every gradient attack.

The attack itself is a short loop, :func:`pgd_loop`: from a random start in the ε-ball, take the
gradient of the objective with respect to the input, step along its sign (Linf) or direction (L2),
project back onto the ε-ball around the image and into [0, 1]; repeat, and start over for each restart.
The bookkeeping sits in small helpers beside it:

* :class:`RandomStarts` draws each restart's starting points (one generator, or one per image);
* :class:`BestPoints` keeps each image's best point as judged by the *real* model (the paper's
  test-time rule for CAS models), re-judging in fp32 every bf16 verdict near the decision boundary;
* :class:`Standing` is the set of images still attacked, narrowed once the real model is fooled when
  ``until_fooled`` is set.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

import torch

from ..precision import autocast, fast_bf16
from .objectives import margin
from .settings import AttackSettings, per_image, targets_for

# bf16 logits are off by far less than this (logit units): an image whose bf16 margin is further below
# zero is certainly not adversarial, so only the others need the fp32 forward that decides
JUDGE_TOLERANCE = 0.5


def pgd_loop(model, x: torch.Tensor, y: torch.Tensor, s: AttackSettings, objective: Callable,
             progress: Callable[[int, int], None] | None = None, keep_best: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``objective`` (see :mod:`cas.attacks.objectives`) with restarts;
    returns each image's best point as judged by the real model's margin.

    ``progress(done, total)`` is called after every step. ``keep_best=False`` returns the first
    restart's last iterate and skips judging (training-time examples). ``generator`` replaces the one
    seeded from ``s.seed``. ``s.until_fooled`` drops an image from the batch once the real model is
    fooled: an accuracy is the same (images do not interact in eval mode, and every image's random
    start is drawn as before), for a fraction of the work when most images fall early; the returned
    point is then adversarial but not the strongest one the full schedule would reach."""
    x, y, s = x.detach(), y.to(x.device), _budgets_per_image(s, x)
    target = targets_for(s, y, num_classes(model, x))
    fast = s.amp and fast_bf16(x.device)
    starts = RandomStarts(x, s, generator)
    best = BestPoints(model, x, y, target, fast) if keep_best else None
    prune = keep_best and s.until_fooled
    steps = _Counter(progress, s.restarts * s.steps)
    # one autocast region for the whole attack: the bf16 copies of the weights are made once, not every step
    with autocast(x.device, True) if fast else contextlib.nullcontext():
        for _ in range(s.restarts):
            start = starts.draw()
            im = Standing(x, y, target, s.eps, s.step_size, best.unbroken_rows() if prune else None)
            x_adv = (im.x + rows(start, im.idx)).clamp(0, 1)
            for _ in range(s.steps):
                if len(im):
                    grad, logits = input_gradient(objective, model, x_adv, im.y, im.target, s)
                    if best:
                        best.consider(im, x_adv, logits)
                    x_adv = ascent_step(x_adv, grad, im.x, im.eps, im.step_size, s.norm)
                    if prune:  # keep only the images the real model still gets right
                        x_adv = im.keep(best.unbroken(im.idx), x_adv)
                steps.tick()
            if best is None:
                return x_adv.detach()
            if len(im):
                best.consider(im, x_adv, None)
    return best.x.detach()


def input_gradient(objective: Callable, model, x_adv, y, target, s):
    """The gradient of the summed per-image objective with respect to the images ``x_adv``, and the
    objective's logits (None when its forward is not the real model's)."""
    x_adv.requires_grad_(True)
    with torch.enable_grad():
        loss, logits = objective(model, x_adv, y, target, s)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad, logits


def ascent_step(x_adv, grad, x, eps, step_size, norm: str) -> torch.Tensor:
    """One PGD step from ``x_adv``: ``step_size`` along the gradient's sign (Linf) or unit direction
    (L2), then back onto the ε-ball around the clean images ``x`` and into [0, 1]."""
    with torch.no_grad():
        if norm == "linf":
            step = step_size * grad.sign()
        else:
            norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            step = step_size * grad / norms[:, None, None, None]
        delta = project(x_adv.detach() + step - x, eps, norm)
        return (x + delta).clamp(0, 1)


def project(delta: torch.Tensor, eps, norm: str) -> torch.Tensor:
    """The perturbations ``delta`` moved onto the ε-ball: clipped per pixel (Linf) or shortened to
    length ε (L2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / n).clamp(max=1.0)[:, None, None, None]


def rows(v, idx):
    """The rows ``idx`` of a per-image tensor; a value shared by all images (a number, None, a 0-d
    tensor) as it is, and everything when ``idx`` is None."""
    return v if idx is None or not isinstance(v, torch.Tensor) or v.dim() == 0 else v[idx]


class RandomStarts:
    """Where each restart begins: a random point in the ε-ball (``random_start=True``), the TRADES/MART
    training start ``x + 0.001 * N(0, 1)`` (``"normal"``) or the image itself (False).

    Draws come from ``generator``, else from one generator seeded with ``s.seed``, else, when
    ``s.seed`` holds one seed per image, from one generator per image: image i's start is then
    exactly the start a one-image attack seeded with its seed draws, restart after restart."""

    def __init__(self, x: torch.Tensor, s: AttackSettings, generator: torch.Generator | None = None):
        self.x, self.s = x, s
        if generator is not None:
            self.generators = [generator]
        elif s.per_image_seeds:
            if len(s.seed) != x.shape[0]:
                raise ValueError(f"got {len(s.seed)} per-image seeds for {x.shape[0]} images")
            self.generators = [new_generator(x.device, seed) for seed in s.seed]
        else:
            self.generators = [new_generator(x.device, s.seed)]

    def draw(self) -> torch.Tensor:
        """The next restart's offsets from the images (N, C, H, W)."""
        s, x = self.s, self.x
        if not s.random_start:
            return torch.zeros_like(x)
        if len(self.generators) == 1:
            return random_offset(x, s.eps, s.norm, self.generators[0], s.random_start)
        return torch.cat([random_offset(x[i:i + 1], rows(s.eps, slice(i, i + 1)), s.norm, gen, s.random_start)
                          for i, gen in enumerate(self.generators)])


def random_offset(x, eps, norm, gen, kind=True):
    """Random offsets for the images ``x``: uniform in the ε-ball, or 0.001 * N(0, 1) for ``"normal"``."""
    if kind == "normal":  # TRADES/MART training start: x + 0.001 * N(0, 1)
        return 0.001 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    if norm == "linf":
        return (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1 / d[0].numel())
    return d * (eps * r)[:, None, None, None]


def new_generator(device, seed) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (None: fresh randomness)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


class Standing:
    """The images an attack still works on (``idx``: their rows in the batch, None for all) and
    their rows of every per-image quantity: clean images, labels, targets, budgets, step sizes."""

    def __init__(self, x, y, target, eps, step_size, idx=None):
        self.idx = idx
        self.x, self.y, self.target, self.eps, self.step_size = (rows(v, idx) for v in (x, y, target, eps, step_size))

    def __len__(self) -> int:
        return len(self.y)

    def keep(self, alive: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Narrow to the images where ``alive`` is true; returns their rows of ``x_adv``."""
        if bool(alive.all()):
            return x_adv
        self.idx = alive.nonzero().flatten() if self.idx is None else self.idx[alive]
        self.x, self.y, self.target, self.eps, self.step_size = (
            rows(v, alive) for v in (self.x, self.y, self.target, self.eps, self.step_size))
        return x_adv[alive]


class BestPoints:
    """Each image's best point so far (``x``) and its margin (``score``; > 0: the real model is
    fooled), as judged by the real model ``model(x)``. Under bf16 (``bf16=True``) every image whose
    margin is within :data:`JUDGE_TOLERANCE` of the boundary, or past it, is judged again in fp32."""

    def __init__(self, model, x, y, target, bf16: bool):
        self.model, self.y, self.target, self.bf16 = model, y, target, bf16
        self.x = x.clone()
        self.score = torch.full((x.shape[0],), float("-inf"), device=x.device)

    def unbroken(self, idx=None) -> torch.Tensor:
        """Whether the real model still gets each image (of rows ``idx``) right."""
        return rows(self.score, idx) <= 0

    def unbroken_rows(self):
        """The rows of the images not yet broken, or None when none is broken (all of them)."""
        return (self.score <= 0).nonzero().flatten() if bool((self.score > 0).any()) else None

    def consider(self, im: Standing, x_cand: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Keep the candidates ``x_cand`` (rows ``im.idx``) that beat the best points so far.
        ``logits``: the real model's logits for them if already computed, else None."""
        with torch.no_grad():
            if logits is None:  # the gradient forward was not the real model's
                with autocast(x_cand.device, True) if self.bf16 else contextlib.nullcontext():
                    logits = self.model(x_cand)
            score = self._judge(x_cand, logits, im.y, im.target)
            old = rows(self.score, im.idx)
            better = score > old
            new_score = torch.where(better, score, old)
            new_x = torch.where(better[:, None, None, None], x_cand.detach(), rows(self.x, im.idx))
            if im.idx is None:
                self.score.copy_(new_score)
                self.x.copy_(new_x)
            else:
                self.score[im.idx], self.x[im.idx] = new_score, new_x

    def _judge(self, x_cand, logits, y, target) -> torch.Tensor:
        """The margins of ``x_cand``; bf16 margins near or past the boundary recomputed in fp32."""
        score = margin(logits.detach().float(), y, target)
        if logits.dtype != torch.float32:
            near = score > -JUDGE_TOLERANCE
            if near.any():
                with torch.autocast(x_cand.device.type, enabled=False):
                    score[near] = margin(self.model(x_cand[near].detach()).float(), y[near],
                                         None if target is None else target[near])
        return score


class _Counter:
    """Counts steps and reports them to ``progress(done, total)``."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def tick(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)


def _budgets_per_image(s: AttackSettings, x) -> AttackSettings:
    """``s`` with tensor budgets and steps shaped (N, 1, 1, 1) to broadcast over the images."""
    if isinstance(s.eps, torch.Tensor) or isinstance(s.step_size, torch.Tensor):
        if s.norm != "linf":
            raise ValueError("one budget per image is supported for Linf attacks only")
        s = replace(s, eps=per_image(s.eps, x), step_size=per_image(s.step_size, x))
    return s


def num_classes(model, x) -> int:
    """The model's number of classes (``model.num_classes``, else one forward of one image)."""
    n = getattr(model, "num_classes", None)
    if n is None:
        with torch.no_grad():
            n = model(x[:1]).shape[1]
    return n
