"""What an attack is asked to do: its budget, schedule and randomness (:class:`AttackSettings`).

Budgets are in input units (images in [0, 1]; 8/255 is the usual CIFAR-10 Linf budget). ``eps`` and
``step_size`` may hold one value per image (Linf gradient attacks), and ``seed`` one seed per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed accepts
AUTO_STEP = "automatic: max(ε / 4, 2.5 × ε / steps)"  # the rule of auto_step_size, in words


def auto_step_size(eps, steps: int):
    """The automatic step size of iterative attacks: max(eps / 4, 2.5 x eps / steps) (2/255 for the
    usual 8/255 and 10 steps; the budget's size for very few steps). Works per image on tensors."""
    if isinstance(eps, torch.Tensor):
        return torch.maximum(2.5 * eps / steps, eps / 4)
    return max(2.5 * eps / steps, eps / 4)


@dataclass(frozen=True)
class AttackSettings:
    """Budget and schedule of an attack. ``eps`` and ``step_size`` are in input units ([0, 1] scale;
    8/255 is the usual CIFAR-10 Linf budget). ``target``: None (untargeted), a class index for every
    image, or a tensor of per-image targets. ``aux_weight``: weight of the mean auxiliary loss in the
    CAS-adaptive attacks (2, as the authors trained and evaluated). ``seed``: None (fresh randomness),
    one seed for the batch, or one seed per image (a sequence or 1-D tensor): each image then starts
    where a one-image attack with its seed would start."""

    eps: float = 8 / 255
    steps: int = 20
    step_size: float | None = None  # None: auto_step_size(eps, steps)
    norm: str = "linf"
    random_start: bool | str = True  # True: uniform in the ball; "normal": x + 0.001 * N(0, 1)
    restarts: int = 1
    target: int | torch.Tensor | None = None
    aux_weight: float = 2.0
    seed: int | tuple[int, ...] | torch.Tensor | None = 0
    queries: int = 1000  # Square attack's query budget
    amp: bool = True  # bf16 autocast for gradients where the hardware does bf16 natively (judged in fp32)
    until_fooled: bool = False  # stop attacking an image once the real model is fooled (for accuracies)

    def validated(self) -> AttackSettings:
        """These settings checked (ValueError naming the setting), with the step size filled in."""
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        limit = 1.0 if self.norm == "linf" else math.sqrt(3 * 32 * 32)
        eps = torch.as_tensor(self.eps, dtype=torch.float32)
        if eps.dim() > 1 or eps.isnan().any() or not bool(((eps >= 0) & (eps <= limit)).all()):
            raise ValueError(f"eps must be between 0 and {limit:g} for {self.norm}, got {self.eps}")
        if not (1 <= int(self.steps) <= 10_000):
            raise ValueError(f"steps must be between 1 and 10000, got {self.steps}")
        if self.step_size is not None and not (0 < self.step_size <= max(limit, 1.0)):
            raise ValueError(f"step_size must be positive and at most {limit:g}, got {self.step_size}")
        if not (1 <= int(self.restarts) <= 100):
            raise ValueError(f"restarts must be between 1 and 100, got {self.restarts}")
        if not (1 <= int(self.queries) <= 100_000):
            raise ValueError(f"queries must be between 1 and 100000, got {self.queries}")
        if not 0 <= self.aux_weight <= 100:  # also refuses NaN
            raise ValueError(f"aux_weight must be between 0 and 100, got {self.aux_weight}")
        step = self.step_size if self.step_size is not None else auto_step_size(self.eps, int(self.steps))
        return replace(self, steps=int(self.steps), restarts=int(self.restarts), step_size=step,
                       seed=_checked_seed(self.seed))

    @property
    def per_image_seeds(self) -> bool:
        """Whether ``seed`` holds one seed per image."""
        return isinstance(self.seed, tuple)

    def scalar_seed(self, attack: str) -> int:
        """The one seed of an attack that takes one for the batch (0 when none is given)."""
        if self.per_image_seeds:
            raise ValueError(f"{attack} takes one seed for all images, not one per image")
        return 0 if self.seed is None else int(self.seed)


def _checked_seed(seed):
    """A single seed as given (None: fresh randomness); a sequence or 1-D tensor of seeds as a tuple
    of ints, one per image."""
    if isinstance(seed, torch.Tensor):
        if seed.dim() == 0:
            return seed
        if seed.dim() > 1 or seed.is_floating_point() or seed.is_complex():
            raise ValueError("seed must be a whole number, or a 1-D tensor of whole numbers (one per image)")
        seed = seed.tolist()
    if not isinstance(seed, (list, tuple)):
        return seed
    if not seed or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED for v in seed):
        raise ValueError(f"per-image seeds must be whole numbers from 0 to {MAX_SEED}, got {seed!r}")
    return tuple(seed)


def resolve(settings: AttackSettings | None, overrides: dict, defaults: dict | None = None) -> AttackSettings:
    """``settings`` (or the attack's own ``defaults`` when none is given), then keyword
    ``overrides``, validated."""
    s = settings or AttackSettings(**(defaults or {}))
    if overrides:
        s = replace(s, **overrides)
    return s.validated()


def targets_for(s: AttackSettings, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The per-image target classes of a targeted attack (None when untargeted)."""
    if s.target is None:
        return None
    t = torch.as_tensor(s.target, device=y.device, dtype=torch.long)
    t = t.expand_as(y) if t.dim() == 0 else t
    if t.shape != y.shape or t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"target must be a class index in [0, {num_classes - 1}] (one or one per image)")
    return t


def per_image(v, x: torch.Tensor):
    """A budget or step for every image of ``x``, shaped to broadcast over (N, C, H, W); a plain
    number stays as it is."""
    if not isinstance(v, torch.Tensor):
        return v
    v = v.to(x.device, x.dtype).reshape(-1)
    if v.numel() not in (1, x.shape[0]):
        raise ValueError(f"got {v.numel()} per-image budgets for {x.shape[0]} images")
    return v.expand(x.shape[0]).reshape(-1, 1, 1, 1)


def scalar_budget(s: AttackSettings, attack: str) -> AttackSettings:
    """``s``, refused when it holds one budget per image (attacks that take one for the batch)."""
    if isinstance(s.eps, torch.Tensor):
        raise ValueError(f"{attack} takes one budget for all images, not one per image")  # noqa: TRY004
    return s
