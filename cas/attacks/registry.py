"""The one registry of what is known about each attack (:data:`ATTACKS`), and :func:`run_attack`.

An :class:`AttackSpec` says what an attack *is*: its function, its settings (:class:`Knob`: key,
field, kind, bounds, default, display scale and unit), its norm, whether it needs CAS and what it
becomes without, whether its gradient sees the CAS mask, its strength rank, and its evaluation
preset with the key and column name its accuracy goes under. How a setting is shown (labels, help
texts, increments of number fields) belongs to the pages, not here; the evaluator and every page
derive their lists from this registry.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .external import adaptive_autoattack, autoattack, square
from .gradient import cw_linf, fgsm, joint_pgd, pgd, pgd_l2, soft_mask_pgd
from .protocols import AUTHORS_BATCH, AUTHORS_SCHEDULE, PROTOCOLS, authors_cw, authors_pgd
from .settings import AttackSettings


@dataclass(frozen=True)
class Knob:
    """One user setting of an attack. ``key`` names it on the pages and in links; ``field`` is the
    :class:`~cas.attacks.AttackSettings` field it sets; pages show ``value = library value x scale``
    (255 for budgets in /255), in ``unit``. ``kind``: "float", "int", "bool", "step" (a float; None =
    automatic) or "class" (a class index; None = untargeted). ``name``: the setting in plain words,
    for messages (the key when empty)."""

    key: str
    field: str
    kind: str
    low: float
    high: float
    default: object
    scale: float = 1.0
    unit: str = ""
    name: str = ""

    @property
    def title(self) -> str:
        """The setting's name with its unit, as messages write it: "ε (/255)"."""
        name = self.name or self.key
        return f"{name} ({self.unit})" if self.unit else name

    def check(self, value) -> None:
        """Raise ValueError, naming the setting, if ``value`` (in display units) is not allowed."""
        if value is None and self.kind in ("step", "class"):
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.title}: expected true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or not self.low <= value <= self.high:
            raise ValueError(f"{self.title} must be between {self.low:g} and {self.high:g}, got {value!r}")

    def to_library(self, value):
        """A display value in library units (divided by ``scale``)."""
        return value / self.scale if self.kind in ("float", "step") and value is not None else value


LINF_EPS = Knob("eps", "eps", "float", 0.0, 64.0, 8.0, 255, "/255", "ε")
L2_EPS = Knob("l2eps", "eps", "float", 0.0, 10.0, 0.5, 1, "L2", "ε")
STEPS = Knob("steps", "steps", "int", 1, 1000, 20, name="steps")
LINF_STEP = Knob("step", "step_size", "step", 0.01, 64.0, None, 255, "/255", "step size")
FGSM_STEP = LINF_STEP  # the same setting; automatic means ε for FGSM
L2_STEP = Knob("l2step", "step_size", "step", 0.001, 10.0, None, 1, "L2", "step size")
RANDOM_START = Knob("rand", "random_start", "bool", 0, 1, True, name="random start")
TARGET = Knob("target", "target", "class", 0, 9, None, name="target class")
SEED = Knob("seed", "seed", "int", 0, 2**31 - 1, 0, name="seed")
QUERIES = Knob("queries", "queries", "int", 10, 10_000, 300, unit="model evaluations", name="queries")
ITERATIVE_KNOBS = (LINF_EPS, STEPS, LINF_STEP, RANDOM_START, TARGET, SEED)
# the authors' protocol: their budget (0.031, just under 8/255) and seed; the schedule is theirs, fixed
AUTHORS_EPS = replace(LINF_EPS, default=round(AUTHORS_SCHEDULE["eps"] * 255, 4))


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
    per_image_seeds: bool = True  # takes one seed per image (else one for the batch)
    batch_multiple: int = 1  # the evaluator's batches are multiples of this (an attack whose loss spans a batch)
    defenses: tuple[str, ...] | None = None  # the family members it is meant for (a paper's own protocol); None: any

    def applies_to(self, model) -> bool:
        """Whether the evaluator runs this attack on ``model`` (CAS-only attacks need modules, a
        relative's own protocol needs that relative)."""
        has_cas = getattr(model, "has_cas", False)
        if self.needs_cas and not has_cas:
            return False
        return self.defenses is None or (has_cas and getattr(model, "defense", "cas") in self.defenses)

    def knob(self, key: str) -> Knob | None:
        return next((k for k in self.knobs if k.key == key), None)

    def for_model(self, model) -> AttackSpec:
        """This attack on ``model``: a CAS-only attack on a model without CAS becomes its fallback."""
        if self.needs_cas and not getattr(model, "has_cas", False):
            return ATTACKS[self.fallback]
        return self


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
               card_key="square", column="Square", preset={"queries": 5000}, per_image_seeds=False),
    AttackSpec("joint_pgd", joint_pgd, "Joint PGD (mask-adaptive)",
               "PGD on the final loss + 2 × the mean loss of the defence's auxiliary heads (CAS's authors' "
               "loss), through the real masks, with steps of 2/255, keeping each image's best point; the "
               "authors' own schedule is authors_pgd", ITERATIVE_KNOBS,
               needs_cas=True, fallback="pgd", card_key="joint_pgd20", column="joint PGD-20", preset=_PGD20,
               strength=3),
    AttackSpec("soft_mask_pgd", soft_mask_pgd, "Soft-mask PGD (mask-adaptive)",
               "PGD whose gradient flows through a smooth version of the mask (a softmax-weighted mix of "
               "rows for CAS and EWAS, a soft top-2 for CIFS, a softer sigmoid for FSR); the real model "
               "judges every step", ITERATIVE_KNOBS,
               needs_cas=True, fallback="pgd", sees_mask=True, card_key="soft_mask_pgd20",
               column="soft-mask PGD-20", preset=_PGD20, strength=3),
    AttackSpec("autoattack", autoattack, "AutoAttack", "APGD-CE, APGD-T, FAB-T and Square, standard version",
               (LINF_EPS, SEED), gradient=False, untargeted_only=True, interactive=False,
               card_key="autoattack", column="AutoAttack", strength=3, per_image_seeds=False),
    AttackSpec("adaptive_autoattack", adaptive_autoattack, "Adaptive AutoAttack (mask-adaptive)",
               "AutoAttack's APGD-CE and APGD-T with gradients through the smooth mask at temperatures "
               "0.1, 1 and 10, judged by the real model, per-image worst case",
               (LINF_EPS, SEED), needs_cas=True, fallback="autoattack", sees_mask=True, gradient=False,
               untargeted_only=True, interactive=False, card_key="adaptive_autoattack",
               column="adaptive AutoAttack", strength=4, per_image_seeds=False),
    # what the paper's numbers were measured with: their schedule, loss and last iterate (see .protocols)
    AttackSpec("authors_pgd", authors_pgd, "Authors' PGD-20 (the paper's protocol)",
               "the CAS authors' own evaluation: 20 steps of 0.003 within 0.031 on the final + 2 x mean "
               "auxiliary cross-entropy, last iterate, as the paper's PGD-20 numbers were measured",
               (AUTHORS_EPS, SEED), gradient=False, untargeted_only=True, card_key="authors_pgd20",
               column="authors' PGD-20", preset=dict(AUTHORS_SCHEDULE)),
    AttackSpec("authors_cw", authors_cw, "Authors' CW (the paper's protocol)",
               "the CAS authors' own CW evaluation: the same schedule on the margin loss of the final + 2 x "
               "mean auxiliary heads, clipped per batch of 200, last iterate, as the paper's CW numbers were "
               "measured", (AUTHORS_EPS, SEED), gradient=False, untargeted_only=True, card_key="authors_cw",
               column="authors' CW", preset=dict(AUTHORS_SCHEDULE), batch_multiple=AUTHORS_BATCH),
]}
# the relatives' own evaluations (CIFS, EWAS, FSR; see .protocols), each for its own defence
ATTACKS.update({p.name: AttackSpec(
    p.name, p, p.label, f"{p.label.split(' authors')[0]}'s own evaluation ({p.source} of its public code): "
    f"{p.steps} step(s) of {p.step_size:.4f} within {p.eps:.4f}, {'uniform' if p.random_start else 'no'} random "
    f"start, {'cross-entropy' if p.loss == 'ce' else 'CW margin (confidence 50)'} of the final head"
    + (f" + {p.aux_weight:g} x mean auxiliary" if p.aux_weight else "") + ", last iterate",
    (replace(LINF_EPS, default=round(p.eps * 255, 4)), SEED), gradient=False, untargeted_only=True,
    interactive=False, card_key=p.name, column=p.label,
    preset={k: getattr(p, k) for k in ("eps", "steps", "step_size", "random_start", "aux_weight")},
    defenses=(p.defense,))
    for p in PROTOCOLS.values()})


def own_protocol(defense: str | None) -> list[AttackSpec]:
    """The attacks a defence's own authors evaluated it with: the CAS authors' PGD-20 and CW for CAS,
    a relative's :data:`~cas.attacks.protocols.PROTOCOLS` for it; none without a defence."""
    if defense is None:
        return []
    if defense == "cas":
        return [ATTACKS["authors_pgd"], ATTACKS["authors_cw"]]
    return [s for s in ATTACKS.values() if s.defenses == (defense,)]


def run_attack(name: str, model, x, y, settings: AttackSettings | None = None, progress=None, **kw):
    """Run the attack called ``name`` (a key of :data:`ATTACKS`, or ``"none"`` for the clean input)."""
    if name == "none":
        return x.detach().clone()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: none, {', '.join(ATTACKS)}")
    return ATTACKS[name].fn(model, x, y, settings, progress=progress, **kw)
