"""The gradient attacks: each one is :func:`~cas.attacks.engine.pgd_loop` on an objective, with its
own defaults. Calling convention: ``fn(model, x, y, settings=None, progress=None, **overrides)``."""
from __future__ import annotations

from dataclasses import replace

from .engine import pgd_loop
from .objectives import obj_ce, obj_cw, obj_joint, obj_soft
from .settings import resolve


def needs_cas(model, attack: str) -> None:
    """Refuse a CAS-only attack on a model without CAS (pages use ``AttackSpec.for_model`` instead)."""
    if not getattr(model, "has_cas", False):
        raise ValueError(f"the {attack} attack is for CAS models; this model has no CAS module")


def fgsm(model, x, y, settings=None, progress=None, **kw):
    """One signed-gradient step of size eps (from a random start only if asked: R-FGSM)."""
    s = resolve(settings, {"steps": 1, "restarts": 1, **kw}, {"random_start": False})
    s = replace(s, step_size=s.eps if "step_size" not in kw else s.step_size)
    return pgd_loop(model, x, y, s, obj_ce, progress)


def pgd(model, x, y, settings=None, progress=None, **kw):
    """PGD on the cross-entropy of the final logits (Linf by default; ``norm="l2"`` for PGD-L2)."""
    return pgd_loop(model, x, y, resolve(settings, kw), obj_ce, progress)


def pgd_l2(model, x, y, settings=None, progress=None, **kw):
    """PGD in the L2 norm (default budget eps = 0.5)."""
    return pgd_loop(model, x, y, resolve(settings, {"norm": "l2", **kw}, {"eps": 0.5}), obj_ce, progress)


def cw_linf(model, x, y, settings=None, progress=None, **kw):
    """PGD on the Carlini-Wagner margin loss (CW-Linf, as in the robustness literature)."""
    return pgd_loop(model, x, y, resolve(settings, kw, {"steps": 30}), obj_cw, progress)


def joint_pgd(model, x, y, settings=None, progress=None, **kw):
    """CAS-adaptive: PGD on final loss + aux_weight x mean auxiliary loss (the authors' loss). The
    evaluator runs it with steps of 2/255 and keeps each image's best point; the authors' own protocol
    (20 steps of 0.003, last iterate) is ``authors_pgd``."""
    needs_cas(model, "joint PGD")
    return pgd_loop(model, x, y, resolve(settings, kw), obj_joint, progress)


def soft_mask_pgd(model, x, y, settings=None, progress=None, **kw):
    """CAS-adaptive: the joint loss computed through soft (softmax-mixed) masks, judged by the real
    model. The strongest attack on CAS we know."""
    needs_cas(model, "soft-mask PGD")
    return pgd_loop(model, x, y, resolve(settings, kw), obj_soft, progress)
