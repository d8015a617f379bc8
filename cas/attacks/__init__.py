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
of what is known about each attack (:class:`AttackSpec`).

The package, one job per module:

* :mod:`.settings`: :class:`AttackSettings` (budget, schedule, seeds) and :func:`auto_step_size`;
* :mod:`.objectives`: the losses attacks maximise, and :func:`margin`;
* :mod:`.engine`: :func:`pgd_loop`, projected gradient ascent, with its bookkeeping;
* :mod:`.gradient`: FGSM, PGD, PGD-L2, CW-Linf, joint PGD and soft-mask PGD;
* :mod:`.external`: Square, AutoAttack and adaptive AutoAttack (package ``pyautoattack``);
* :mod:`.protocols`: the CAS authors' own evaluation (their PGD-20 and CW), what the paper measured with;
* :mod:`.registry`: :class:`Knob`, :class:`AttackSpec`, :data:`ATTACKS` and :func:`run_attack`.
"""
from .engine import JUDGE_TOLERANCE, pgd_loop
from .external import AUTOATTACK_VERSIONS, TEMPERATURES, adaptive_autoattack, autoattack, square
from .gradient import cw_linf, fgsm, joint_pgd, pgd, pgd_l2, soft_mask_pgd
from .objectives import margin, obj_ce, obj_cw, obj_joint, obj_soft
from .protocols import AUTHORS_BATCH, AUTHORS_SCHEDULE, AUTHORS_SETTINGS, authors_cw, authors_pgd
from .registry import (
    ATTACKS,
    FGSM_STEP,
    ITERATIVE_KNOBS,
    L2_EPS,
    L2_STEP,
    LINF_EPS,
    LINF_STEP,
    QUERIES,
    RANDOM_START,
    SEED,
    STEPS,
    TARGET,
    AttackSpec,
    Knob,
    own_protocol,
    run_attack,
)
from .settings import AUTO_STEP, AttackSettings, auto_step_size

__all__ = [
    "ATTACKS", "AUTHORS_BATCH", "AUTHORS_SCHEDULE", "AUTHORS_SETTINGS", "AUTOATTACK_VERSIONS", "AUTO_STEP", "FGSM_STEP", "ITERATIVE_KNOBS", "JUDGE_TOLERANCE",
    "L2_EPS", "L2_STEP", "LINF_EPS", "LINF_STEP", "QUERIES", "RANDOM_START", "SEED", "STEPS", "TARGET",
    "TEMPERATURES", "AttackSettings", "AttackSpec", "Knob", "adaptive_autoattack", "auto_step_size",
    "authors_cw", "authors_pgd", "autoattack", "cw_linf", "fgsm", "joint_pgd", "margin", "obj_ce", "obj_cw", "obj_joint", "obj_soft",
    "own_protocol", "pgd", "pgd_l2", "pgd_loop", "run_attack", "soft_mask_pgd", "square",
]
