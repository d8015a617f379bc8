"""Attacks from AutoAttack's reference implementation (the ``pyautoattack`` package): Square,
AutoAttack, and AutoAttack's APGD with gradients through the soft CAS mask (adaptive AutoAttack).

The adapters below present a model to that code as a plain module, so that its ``eval()``/``train()``
calls and its reseeding of torch's global generators never reach the caller's model or randomness;
results are clipped to the budget and the image range exactly.
"""
from __future__ import annotations

import contextlib
import io
import logging

import torch

from ..precision import autocast
from .engine import project
from .settings import resolve, scalar_budget


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
    from pyautoattack.square import SquareAttack  # lazy: pyautoattack takes over a second to import

    s = scalar_budget(resolve(settings, kw), "Square")
    if s.target is not None:
        raise ValueError("the Square attack runs untargeted here; leave the target empty")
    atk = SquareAttack(_Logits(model, s.amp), p_init=0.8, n_queries=s.queries, eps=s.eps,
                       norm="Linf" if s.norm == "linf" else "L2", n_restarts=1,
                       seed=s.scalar_seed("the Square attack"), verbose=False, device=x.device,
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
    from pyautoattack import AutoAttack  # lazy: pyautoattack takes over a second to import

    s = scalar_budget(resolve(settings, kw), "AutoAttack")
    if s.target is not None:
        raise ValueError("AutoAttack runs untargeted here; leave the target empty")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(AUTOATTACK_VERSIONS)}")
    subset = AUTOATTACK_VERSIONS[version]
    adversary = AutoAttack(_Logits(model, s.amp), norm="Linf" if s.norm == "linf" else "L2", eps=s.eps,
                           version="custom" if subset else version, attacks=subset,
                           seed=s.scalar_seed("AutoAttack"), device=x.device)
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
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # lazy: a second to import

    s = scalar_budget(resolve(settings, kw), "adaptive AutoAttack")
    if s.target is not None:
        raise ValueError("adaptive AutoAttack runs untargeted here; leave the target empty")
    temperatures = [float(t) for t in temperatures]
    if not temperatures or not all(0.001 <= t <= 1000 for t in temperatures):
        raise ValueError(f"temperatures must lie between 0.001 and 1000, got {temperatures}")
    has_cas = getattr(model, "has_cas", False)
    if not has_cas:
        temperatures = [1.0]  # no mask: one run on the plain logits
    norm = "Linf" if s.norm == "linf" else "L2"
    seed = s.scalar_seed("adaptive AutoAttack")
    x, y = x.detach(), y.to(x.device)
    x_adv = x.clone()
    standing = _fp32_correct(model, x, y)
    runs = [(APGDAttack, {"loss": "ce"}, t) for t in temperatures] + \
           [(APGDAttack_targeted, {"n_target_classes": 9}, t) for t in temperatures]
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
    return (x + project(x_adv.detach().to(x.dtype) - x, s.eps, s.norm)).clamp(0, 1)
