"""Adversarial attacks with one calling convention.

Every attack is ``fn(model, x, y, settings) -> x_adv``: ``model(x)`` returns logits for images in
[0, 1]; ``x_adv`` lies in [0, 1] and within ``settings.eps`` of ``x`` in the attack's norm. Attacks never
change the model's mode, never register hooks and never write to it (gradients are taken with respect
to the input only), so a model shared between threads can be attacked safely. Call
``model.eval()`` first for the usual evaluation.

Gradient attacks keep, per image, the best point they visited as judged by the *real* model
(``model(x)``, the paper's test-time rule for CAS models): the point with the highest margin
(``max other logit - true logit``, or ``target logit - max other`` when targeted). This matters for the
CAS-adaptive attacks, whose gradients come from a different forward than the one that classifies.

Speed: on hardware with native bf16 (CUDA, CPUs with AVX-512 BF16 or AMX) the gradient computations
run under bf16 autocast (``AttackSettings.amp``; ``amp=False`` or ``CAS_FP32=1`` forces fp32), while
every point is still judged by the real model in fp32.

``run_attack(name, model, x, y, **settings)`` runs an attack by name. ``ATTACKS`` is the one registry
of what is known about each attack (:class:`AttackSpec`): its settings with their units and bounds,
whether it needs CAS and what it becomes without, its evaluation preset and strength rank; the
evaluator and every page of the app derive their lists and controls from it.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from .precision import autocast, fast_bf16


@dataclass(frozen=True)
class AttackSettings:
    """Budget and schedule of an attack. ``eps`` and ``step_size`` are in input units ([0, 1] scale;
    8/255 is the usual CIFAR-10 Linf budget). ``target``: None (untargeted), a class index for every
    image, or a tensor of per-image targets. ``aux_weight``: weight of the mean auxiliary loss in the
    CAS-adaptive attacks (2, as the authors trained and evaluated)."""

    eps: float = 8 / 255
    steps: int = 20
    step_size: float | None = None  # None: auto_step_size(eps, steps)
    norm: str = "linf"
    random_start: bool | str = True  # True: uniform in the ball; "normal": x + 0.001 * N(0, 1)
    restarts: int = 1
    target: int | torch.Tensor | None = None
    aux_weight: float = 2.0
    seed: int | None = 0
    queries: int = 1000  # Square attack's query budget
    amp: bool = True  # bf16 autocast for gradients where the hardware does bf16 natively (judged in fp32)
    until_fooled: bool = False  # stop attacking an image once the real model is fooled (for accuracies)

    def validated(self) -> "AttackSettings":
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
        return replace(self, steps=int(self.steps), restarts=int(self.restarts), step_size=step)


def _settings(settings: AttackSettings | None, kw: dict, defaults: dict | None = None) -> AttackSettings:
    """``settings`` (or the attack's own ``defaults`` when none is given), then keyword overrides."""
    s = settings or AttackSettings(**(defaults or {}))
    if kw:
        s = replace(s, **kw)
    return s.validated()


def _targets(s: AttackSettings, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    if s.target is None:
        return None
    t = torch.as_tensor(s.target, device=y.device, dtype=torch.long)
    t = t.expand_as(y) if t.dim() == 0 else t
    if t.shape != y.shape or t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"target must be a class index in [0, {num_classes - 1}] (one or one per image)")
    return t


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image attack margin: > 0 means the attack succeeded (misclassified, or hit the target)."""
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, cls[:, None], float("-inf"))
    best_other = others.max(1).values
    return (best_other - own) if target is None else (own - best_other)


# -- attack objectives: (model, x_adv, y, target, settings) -> (per-image loss to maximise, logits of
#    the real model or None when the gradient forward is not the real model) ------------------------

def _ce_objective(logits, y, target):
    return -F.cross_entropy(logits, target, reduction="none") if target is not None else \
        F.cross_entropy(logits, y, reduction="none")


def obj_ce(model, x, y, target, s):
    logits = model(x)
    return _ce_objective(logits.float(), y, target), logits


def obj_cw(model, x, y, target, s):
    logits = model(x)
    return margin(logits.float(), y, target), logits


def _joint(model, x, y, target, s, mask):
    logits, aux = model.forward_aux(x, mask=mask)
    loss = _ce_objective(logits.float(), y, target)
    if aux:
        loss = loss + s.aux_weight * torch.stack([_ce_objective(a.float(), y, target) for a in aux]).mean(0)
    return loss, logits if mask == "pred" else None


def obj_joint(model, x, y, target, s):
    """The authors' evaluation: final loss + aux_weight x mean auxiliary loss, real (argmax) masks."""
    return _joint(model, x, y, target, s, "pred")


def obj_soft(model, x, y, target, s):
    """The same joint loss, but every CAS mask is the softmax-weighted mix of its head's rows, so the
    gradient sees how the mask would switch; the real model judges the points (BPDA-style)."""
    return _joint(model, x, y, target, s, "soft")


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / n).clamp(max=1.0)[:, None, None, None]


def _random_start(x, eps, norm, gen, kind=True):
    if kind == "normal":  # TRADES/MART training start: x + 0.001 * N(0, 1)
        return 0.001 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    if norm == "linf":
        return (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1 / d[0].numel())
    return d * (eps * r)[:, None, None, None]


def _per_image(v, x):
    """A budget or step for every image of ``x``, shaped to broadcast over (N, C, H, W)."""
    if not isinstance(v, torch.Tensor):
        return v
    v = v.to(x.device, x.dtype).reshape(-1)
    if v.numel() not in (1, x.shape[0]):
        raise ValueError(f"got {v.numel()} per-image budgets for {x.shape[0]} images")
    return v.expand(x.shape[0]).reshape(-1, 1, 1, 1)


def _generator(device, seed):
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


# bf16 logits are off by far less than this (logit units): an image whose bf16 margin is further below
# zero is certainly not adversarial, so only the others need the fp32 forward that decides
JUDGE_TOLERANCE = 0.5


def pgd_loop(model, x: torch.Tensor, y: torch.Tensor, s: AttackSettings, objective: Callable,
             progress: Callable[[int, int], None] | None = None, keep_best: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``objective`` with restarts; keeps each image's best point as
    judged by the real model's margin. ``progress(done, total)`` is called after every step.
    ``keep_best=False`` returns the last iterate and skips judging (training-time examples).
    ``s.until_fooled`` drops an image from the batch once the real model is fooled: an accuracy is the
    same (images do not interact in eval mode, and every image's random start is drawn as before), for
    a fraction of the work when most images fall early; the returned point is then adversarial but
    not the strongest one the full schedule would reach."""
    x = x.detach()
    y = y.to(x.device)
    if isinstance(s.eps, torch.Tensor) or isinstance(s.step_size, torch.Tensor):
        if s.norm != "linf":
            raise ValueError("one budget per image is supported for Linf attacks only")
        s = replace(s, eps=_per_image(s.eps, x), step_size=_per_image(s.step_size, x))
    target = _targets(s, y, _num_classes(model, x))
    gen = generator or _generator(x.device, s.seed)
    best_x = x.clone()
    best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
    total = s.restarts * s.steps
    done = 0
    prune = keep_best and s.until_fooled

    fast = s.amp and fast_bf16(x.device)

    def rows(v, idx):  # the rows ``idx`` of a per-image tensor (or the value shared by all images)
        return v if idx is None or not isinstance(v, torch.Tensor) or v.dim() == 0 else v[idx]

    def consider(idx, x_cand, logits):
        yi, ti = rows(y, idx), rows(target, idx)
        with torch.no_grad():
            if logits is None:  # the gradient forward was not the real model's
                with autocast(x.device, True) if fast else contextlib.nullcontext():
                    logits = model(x_cand)
            score = margin(logits.detach().float(), yi, ti)
            if logits.dtype != torch.float32:  # bf16: every image near or past the boundary is judged in fp32
                near = score > -JUDGE_TOLERANCE
                if near.any():
                    with torch.autocast(x.device.type, enabled=False):
                        score[near] = margin(model(x_cand[near].detach()).float(), yi[near],
                                             None if ti is None else ti[near])
            old = rows(best_score, idx)
            better = score > old
            new_score = torch.where(better, score, old)
            new_x = torch.where(better[:, None, None, None], x_cand.detach(), rows(best_x, idx))
            if idx is None:
                best_score.copy_(new_score)
                best_x.copy_(new_x)
            else:
                best_score[idx], best_x[idx] = new_score, new_x

    # one autocast region for the whole attack: the bf16 copies of the weights are made once, not every step
    with autocast(x.device, True) if fast else contextlib.nullcontext():
        for _ in range(s.restarts):
            start = (_random_start(x, s.eps, s.norm, gen, s.random_start) if s.random_start
                     else torch.zeros_like(x))
            idx = None  # every image
            if prune and bool((best_score > 0).any()):
                idx = (best_score <= 0).nonzero().flatten()
            xi, yi, ti = rows(x, idx), rows(y, idx), rows(target, idx)
            x_adv = (xi + rows(start, idx)).clamp(0, 1)
            for _ in range(s.steps):
                if len(yi):
                    x_adv.requires_grad_(True)
                    with torch.enable_grad():
                        loss, logits = objective(model, x_adv, yi, ti, s)
                        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
                    if keep_best:
                        consider(idx, x_adv, logits)
                    with torch.no_grad():
                        if s.norm == "linf":
                            step = rows(s.step_size, idx) * grad.sign()
                        else:
                            norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                            step = s.step_size * grad / norms[:, None, None, None]
                        delta = _project(x_adv.detach() + step - xi, rows(s.eps, idx), s.norm)
                        x_adv = (xi + delta).clamp(0, 1)
                    if prune:  # keep only the images the real model still gets right
                        alive = rows(best_score, idx) <= 0
                        if not bool(alive.all()):
                            idx = alive.nonzero().flatten() if idx is None else idx[alive]
                            xi, yi, ti, x_adv = xi[alive], yi[alive], rows(ti, alive), x_adv[alive]
                done += 1
                if progress:
                    progress(done, total)
            if not keep_best:
                return x_adv.detach()
            if len(yi):
                consider(idx, x_adv, None)
    return best_x.detach()


def _num_classes(model, x) -> int:
    n = getattr(model, "num_classes", None)
    if n is None:
        with torch.no_grad():
            n = model(x[:1]).shape[1]
    return n


def _needs_cas(model, name):  # the attack functions refuse; pages use AttackSpec.for_model
    if not getattr(model, "has_cas", False):
        raise ValueError(f"the {name} attack is for CAS models; this model has no CAS module")


# -- the attacks -----------------------------------------------------------------------------------

def fgsm(model, x, y, settings=None, progress=None, **kw):
    """One signed-gradient step of size eps (from a random start only if asked: R-FGSM)."""
    s = _settings(settings, {"steps": 1, "restarts": 1, **kw}, {"random_start": False})
    s = replace(s, step_size=s.eps if "step_size" not in kw else s.step_size)
    return pgd_loop(model, x, y, s, obj_ce, progress)


def pgd(model, x, y, settings=None, progress=None, **kw):
    """PGD on the cross-entropy of the final logits (Linf by default; ``norm="l2"`` for PGD-L2)."""
    return pgd_loop(model, x, y, _settings(settings, kw), obj_ce, progress)


def pgd_l2(model, x, y, settings=None, progress=None, **kw):
    """PGD in the L2 norm (default budget eps = 0.5)."""
    return pgd_loop(model, x, y, _settings(settings, {"norm": "l2", **kw}, {"eps": 0.5}), obj_ce, progress)


def cw_linf(model, x, y, settings=None, progress=None, **kw):
    """PGD on the Carlini-Wagner margin loss (CW-Linf, as in the robustness literature)."""
    return pgd_loop(model, x, y, _settings(settings, kw, {"steps": 30}), obj_cw, progress)


def joint_pgd(model, x, y, settings=None, progress=None, **kw):
    """CAS-adaptive: PGD on final loss + aux_weight x mean auxiliary loss (the authors' evaluation)."""
    _needs_cas(model, "joint PGD")
    return pgd_loop(model, x, y, _settings(settings, kw), obj_joint, progress)


def soft_mask_pgd(model, x, y, settings=None, progress=None, **kw):
    """CAS-adaptive: the joint loss computed through soft (softmax-mixed) masks, judged by the real
    model. The strongest attack on CAS we know."""
    _needs_cas(model, "soft-mask PGD")
    return pgd_loop(model, x, y, _settings(settings, kw), obj_soft, progress)


def _scalar_budget(s: AttackSettings, name: str) -> AttackSettings:
    if isinstance(s.eps, torch.Tensor):
        raise ValueError(f"{name} takes one budget for all images, not one per image")
    return s


class _Logits(torch.nn.Module):
    """Adapter for third-party attacks: a plain module whose forward is ``model(x)``, and whose
    ``eval``/``train`` calls leave the wrapped model untouched."""

    def __init__(self, model, amp: bool = False):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not registered: no .to()/.train() reaches it
        self.amp = amp

    def forward(self, x):
        with autocast(x.device, self.amp):
            return self._model(x).float()  # fp32 logits even under bf16 autocast (losses, sorting, checks)


def _fork_rng(x):
    """Third-party attacks reseed torch's global generators: keep the caller's state intact."""
    return torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])


def square(model, x, y, settings=None, progress=None, **kw):
    """Square attack (gradient-free random search, Andriushchenko et al. 2020), from AutoAttack's
    reference implementation (package ``pyautoattack``), margin loss, untargeted."""
    from pyautoattack.square import SquareAttack

    s = _scalar_budget(_settings(settings, kw), "Square")
    if s.target is not None:
        raise ValueError("the Square attack runs untargeted here; leave the target empty")
    atk = SquareAttack(_Logits(model, s.amp), p_init=0.8, n_queries=s.queries, eps=s.eps,
                       norm="Linf" if s.norm == "linf" else "L2", n_restarts=1,
                       seed=0 if s.seed is None else int(s.seed), verbose=False, device=x.device,
                       resc_schedule=s.queries != 5000)
    with _fork_rng(x), torch.no_grad():
        x_adv = atk.perturb(x.detach(), y.to(x.device))
    if progress:
        progress(1, 1)
    return _clip(x, x_adv, s)


AUTOATTACK_VERSIONS = {
    "standard": None,  # APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries)
    "apgd": ["apgd-ce", "apgd-t"],  # the standard version's two APGD attacks, same settings
}


def autoattack(model, x, y, settings=None, progress=None, version="standard", **kw):
    """AutoAttack (Croce & Hein 2020) on the final logits, from the maintained package of the
    reference implementation. ``version="standard"``: APGD-CE, APGD-T, FAB-T and Square;
    ``version="apgd"``: its APGD-CE and APGD-T (9 target classes, 100 iterations each) only, which
    is where nearly all of its successes come from, at a fraction of the cost on a CPU."""
    import logging

    from pyautoattack import AutoAttack

    s = _scalar_budget(_settings(settings, kw), "AutoAttack")
    if s.target is not None:
        raise ValueError("AutoAttack runs untargeted here; leave the target empty")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(AUTOATTACK_VERSIONS)}")
    subset = AUTOATTACK_VERSIONS[version]
    adversary = AutoAttack(_Logits(model, s.amp), norm="Linf" if s.norm == "linf" else "L2", eps=s.eps,
                           version="custom" if subset else version, attacks=subset,
                           seed=0 if s.seed is None else int(s.seed), device=x.device)
    if subset:  # the standard version's settings
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = 9
    adversary.verbose = False
    adversary.logger.setLevel(logging.ERROR)
    with _fork_rng(x), contextlib.redirect_stdout(io.StringIO()):
        x_adv, _ = adversary.run_standard_evaluation(x.detach(), y.to(x.device), batch_size=x.shape[0])
    if progress:
        progress(1, 1)
    return _clip(x, x_adv, s)


class _SoftMaskJudgedByArgmax(torch.nn.Module):
    """Logits whose value is the real model's (argmax masks) and whose gradient is the soft-mask
    model's (``softmax(aux / temperature)`` masks): ``soft + (real - soft).detach()``. An attack
    written for ``model(x)``, such as APGD, then keeps and scores every point by the real model while
    its gradient sees how the masks would switch (BPDA-style)."""

    def __init__(self, model, temperature: float, amp: bool = False):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not registered: no .to()/.train() reaches it
        self.temperature = temperature
        self.amp = amp

    def forward(self, x):
        with autocast(x.device, self.amp):
            soft = self._model(x, mask="soft", temperature=self.temperature).float()
            with torch.no_grad():
                real = self._model(x).float()
        return soft + (real - soft).detach()


TEMPERATURES = (0.1, 1.0, 10.0)


def adaptive_autoattack(model, x, y, settings=None, progress=None, temperatures=TEMPERATURES, **kw):
    """AutoAttack's APGD-CE and APGD-T (DLR loss, 9 target classes, 100 iterations each; the
    ``pyautoattack`` classes) with gradients through the soft CAS mask at each temperature of
    ``temperatures``, every candidate kept or dropped by the real model (see
    :class:`_SoftMaskJudgedByArgmax`). The result is the per-image worst case over the runs: an image
    counts as broken as soon as one run fools the real model, judged in fp32. Runs go from cheap to
    expensive (APGD-CE at every temperature, then APGD-T), each on the images still standing. On a
    model without CAS there is nothing to see through: it is AutoAttack's APGD-CE + APGD-T."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    s = _scalar_budget(_settings(settings, kw), "adaptive AutoAttack")
    if s.target is not None:
        raise ValueError("adaptive AutoAttack runs untargeted here; leave the target empty")
    temperatures = [float(t) for t in temperatures]
    if not temperatures or not all(0.001 <= t <= 1000 for t in temperatures):
        raise ValueError(f"temperatures must lie between 0.001 and 1000, got {temperatures}")
    has_cas = getattr(model, "has_cas", False)
    if not has_cas:
        temperatures = [1.0]  # no mask: one run on the plain logits
    norm = "Linf" if s.norm == "linf" else "L2"
    seed = 0 if s.seed is None else int(s.seed)
    x, y = x.detach(), y.to(x.device)
    x_adv = x.clone()
    standing = _fp32_correct(model, x, y)
    runs = [(APGDAttack, dict(loss="ce"), t) for t in temperatures] + \
           [(APGDAttack_targeted, dict(n_target_classes=9), t) for t in temperatures]
    for done, (cls, extra, t) in enumerate(runs):
        idx = standing.nonzero().flatten()
        if len(idx):
            net = _SoftMaskJudgedByArgmax(model, t, s.amp) if has_cas else _Logits(model, s.amp)
            atk = cls(net, n_iter=100, norm=norm, n_restarts=1, eps=s.eps, seed=seed, device=x.device,
                      verbose=False, **extra)
            with _fork_rng(x), contextlib.redirect_stdout(io.StringIO()):
                cand = _clip(x[idx], atk.perturb(x[idx], y[idx]), s)
            fooled = ~_fp32_correct(model, cand, y[idx])
            x_adv[idx[fooled]] = cand[fooled]
            standing[idx[fooled]] = False
        if progress:
            progress(done + 1, len(runs))
    return x_adv


def _fp32_correct(model, x, y) -> torch.Tensor:
    with torch.no_grad(), autocast(x.device, False):
        return model(x).float().argmax(1) == y


def _clip(x, x_adv, s):
    """Guarantee the budget and the image range exactly (third-party code may exceed by rounding)."""
    return (x + _project(x_adv.detach().to(x.dtype) - x, s.eps, s.norm)).clamp(0, 1)


# -- the registry: everything the library, the evaluator and the app know about each attack ------------

@dataclass(frozen=True)
class Knob:
    """One user setting of an attack. ``key`` names it on the pages and in links; ``field`` is the
    :class:`AttackSettings` field it sets; pages show ``value = library value x scale`` (255 for
    budgets in /255). ``kind``: "float", "int", "bool", "step" (a float; None = automatic) or "class"
    (a class index; None = untargeted)."""

    key: str
    field: str
    label: str
    kind: str
    low: float
    high: float
    default: object
    scale: float = 1.0
    help: str = ""
    increment: float = 1  # what one click of a number field adds

    def check(self, value) -> None:
        if value is None and self.kind in ("step", "class"):
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.label}: expected true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or not self.low <= value <= self.high:
            raise ValueError(f"{self.label} must be between {self.low:g} and {self.high:g}, got {value!r}")

    def to_library(self, value):
        return value / self.scale if self.kind in ("float", "step") and value is not None else value


AUTO_STEP = "automatic: max(ε / 4, 2.5 × ε / steps)"  # the one rule, see auto_step_size
LINF_EPS = Knob("eps", "eps", "ε (largest change per pixel, in /255)", "float", 0.0, 64.0, 8.0, 255,
                "8/255 is the usual CIFAR-10 budget; 0 leaves the image unchanged.", 0.5)
L2_EPS = Knob("l2eps", "eps", "ε (L2 length of the perturbation)", "float", 0.0, 10.0, 0.5, 1,
              "Pixel values are in [0, 1]; 0.5 is the usual CIFAR-10 budget.", 0.05)
STEPS = Knob("steps", "steps", "Steps", "int", 1, 1000, 20)
LINF_STEP = Knob("step", "step_size", "Step size (/255; empty = automatic)", "step", 0.01, 64.0, None, 255,
                 AUTO_STEP, 0.25)
FGSM_STEP = replace(LINF_STEP, help="automatic: ε")
L2_STEP = Knob("l2step", "step_size", "Step size (L2; empty = automatic)", "step", 0.001, 10.0, None, 1, AUTO_STEP,
               0.01)
RANDOM_START = Knob("rand", "random_start", "Random start", "bool", 0, 1, True,
                    help="Start from a random point inside the ε-ball instead of the image itself.")
TARGET = Knob("target", "target", "Target", "class", 0, 9, None)
SEED = Knob("seed", "seed", "Seed", "int", 0, 2**31 - 1, 0,
            help="Fixes the random start (and Square's search), so a link reproduces the result.")
QUERIES = Knob("queries", "queries", "Queries (model evaluations)", "int", 10, 10_000, 300, increment=50)
ITERATIVE_KNOBS = (LINF_EPS, STEPS, LINF_STEP, RANDOM_START, TARGET, SEED)


@dataclass(frozen=True)
class AttackSpec:
    """One attack: how to run it, how to present it, when it applies and how to evaluate with it."""

    name: str
    fn: Callable
    label: str
    description: str
    knobs: tuple[Knob, ...]
    norm: str = "linf"
    needs_cas: bool = False  # meaningful only for models with CAS modules ...
    fallback: str | None = None  # ... and what it reduces to on a model without them
    sees_mask: bool = False  # its gradient flows through the (soft) CAS mask
    gradient: bool = True  # a gradient attack (bf16 fast path, one budget per image)
    untargeted_only: bool = False
    interactive: bool = True  # offered on the interactive pages (AutoAttack is too slow for them)
    card_key: str | None = None  # evaluation: the accuracy's key in model cards and index.json ...
    column: str = ""  # ... and its column header in tables
    preset: dict = field(default_factory=dict)  # evaluation settings (the card key's meaning)
    strength: int | None = None  # rank in the strength order (higher: at least as strong); None: unranked

    def knob(self, key: str) -> Knob | None:
        return next((k for k in self.knobs if k.key == key), None)

    def for_model(self, model) -> "AttackSpec":
        """This attack on ``model``: a CAS-only attack on a model without CAS becomes its fallback."""
        if self.needs_cas and not getattr(model, "has_cas", False):
            return ATTACKS[self.fallback]
        return self


def auto_step_size(eps, steps: int):
    """The automatic step size of iterative attacks: max(eps / 4, 2.5 x eps / steps) (2/255 for the
    usual 8/255 and 10 steps; the budget's size for very few steps). Works per image on tensors."""
    if isinstance(eps, torch.Tensor):
        return torch.maximum(2.5 * eps / steps, eps / 4)
    return max(2.5 * eps / steps, eps / 4)


_PGD20 = {"steps": 20, "step_size": 2 / 255}
ATTACKS: dict[str, AttackSpec] = {s.name: s for s in [
    AttackSpec("fgsm", fgsm, "FGSM", "one gradient-sign step of size eps", (LINF_EPS, FGSM_STEP, TARGET, SEED),
               card_key="fgsm", column="FGSM", strength=1),
    AttackSpec("pgd", pgd, "PGD", "iterated gradient steps on the final cross-entropy", ITERATIVE_KNOBS,
               card_key="pgd20", column="PGD-20", preset=_PGD20, strength=2),
    AttackSpec("cw", cw_linf, "CW-Linf", "PGD on the Carlini-Wagner margin loss", ITERATIVE_KNOBS,
               card_key="cw", column="CW-Linf", preset={"steps": 30, "step_size": 2 / 255}),
    AttackSpec("pgd_l2", pgd_l2, "PGD-L2", "PGD in the L2 norm",
               (L2_EPS, STEPS, L2_STEP, RANDOM_START, TARGET, SEED), norm="l2",
               card_key="pgd20_l2", column="PGD-20 (L2)", preset={"steps": 20, "eps": 0.5, "step_size": 0.5 / 8}),
    AttackSpec("square", square, "Square (gradient-free)", "random-search attack that uses no gradients",
               (LINF_EPS, QUERIES, TARGET, SEED), gradient=False, untargeted_only=True,
               card_key="square", column="Square", preset={"queries": 5000}),
    AttackSpec("joint_pgd", joint_pgd, "Joint PGD (CAS-adaptive)",
               "PGD on the final + auxiliary losses, as the CAS authors evaluated", ITERATIVE_KNOBS,
               needs_cas=True, fallback="pgd", card_key="joint_pgd20", column="joint PGD-20", preset=_PGD20,
               strength=3),
    AttackSpec("soft_mask_pgd", soft_mask_pgd, "Soft-mask PGD (CAS-adaptive)",
               "PGD whose gradient flows through softmax-mixed masks", ITERATIVE_KNOBS,
               needs_cas=True, fallback="pgd", sees_mask=True, card_key="soft_mask_pgd20",
               column="soft-mask PGD-20", preset=_PGD20, strength=3),
    AttackSpec("autoattack", autoattack, "AutoAttack", "APGD-CE, APGD-T, FAB-T and Square, standard version",
               (LINF_EPS, SEED), gradient=False, untargeted_only=True, interactive=False,
               card_key="autoattack", column="AutoAttack", strength=3),
    AttackSpec("adaptive_autoattack", adaptive_autoattack, "Adaptive AutoAttack (CAS-adaptive)",
               "AutoAttack's APGD-CE and APGD-T with gradients through the soft mask at temperatures "
               "0.1, 1 and 10, judged by the real model, per-image worst case",
               (LINF_EPS, SEED), needs_cas=True, fallback="autoattack", sees_mask=True, gradient=False,
               untargeted_only=True, interactive=False, card_key="adaptive_autoattack",
               column="adaptive AutoAttack", strength=4),
]}


def run_attack(name: str, model, x, y, settings: AttackSettings | None = None, progress=None, **kw):
    """Run the attack called ``name`` (a key of :data:`ATTACKS`, or ``"none"`` for the clean input)."""
    if name == "none":
        return x.detach().clone()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: none, {', '.join(ATTACKS)}")
    return ATTACKS[name].fn(model, x, y, settings, progress=progress, **kw)
