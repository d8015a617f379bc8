"""What the pages write next to each attack setting: its label, its help text and what one click of its
number field adds, by the setting's key (:attr:`cas.attacks.Knob.key`). The library says what a setting
is (its field, kind, bounds, default and scale); the words and the widget's step belong to the app.

Also the names and help of the mask-adaptive attacks (:data:`ATTACK_WORDS`), which apply to every
defence of the family (CAS, CIFS, EWAS, FSR), not to CAS alone as the library's labels say."""
from __future__ import annotations

from dataclasses import dataclass

import cas
from cas.attacks import AUTO_STEP


@dataclass(frozen=True)
class KnobText:
    """A setting's widget text: ``label``, ``help`` (for a step field: its placeholder) and ``increment``
    (what one click of a number field adds)."""

    label: str
    help: str = ""
    increment: float = 1


TEXT = {
    "eps": KnobText("ε (largest change per pixel, in /255)",
                    "8/255 is the usual CIFAR-10 budget; 0 leaves the image unchanged.", 0.5),
    "l2eps": KnobText("ε (L2 length of the perturbation)",
                      "Pixel values are in [0, 1]; 0.5 is the usual CIFAR-10 budget.", 0.05),
    "steps": KnobText("Steps"),
    "step": KnobText("Step size (/255; empty = automatic)", AUTO_STEP, 0.25),
    "l2step": KnobText("Step size (L2; empty = automatic)", AUTO_STEP, 0.01),
    "rand": KnobText("Random start", "Start from a random point inside the ε-ball instead of the image itself."),
    "target": KnobText("Target"),
    "seed": KnobText("Seed", "Fixes the random start (and Square's search), so a link reproduces the result."),
    "queries": KnobText("Queries (model evaluations)", increment=50),
}
# (attack, setting) -> the text where one attack words a shared setting differently
OVERRIDES = {
    ("fgsm", "step"): KnobText("Step size (/255; empty = automatic)", "automatic: ε", 0.25),  # one step of ε
}


def text_of(attack: str, key: str) -> KnobText:
    """The widget text of setting ``key`` of ``attack``."""
    return OVERRIDES.get((attack, key)) or TEXT[key]


# attack -> (menu label, help) for the attacks that look inside the mask modules, in words for every mask
# defence of the family; every other attack keeps the library's label and description
ATTACK_WORDS = {
    "joint_pgd": ("Joint PGD (mask-adaptive)",
                  ("PGD on the final loss + 2 × the mean loss of the defence's auxiliary heads, through the "
                   "real masks, with steps of 2/255, keeping each image's best point")),
    "soft_mask_pgd": ("Soft-mask PGD (mask-adaptive)",
                      ("PGD whose gradient flows through a smooth version of the mask (a softmax-weighted mix "
                       "of rows for CAS and EWAS, a soft top-2 for CIFS, a softer sigmoid for FSR); the real "
                       "model judges every step")),
    "adaptive_autoattack": ("Adaptive AutoAttack (mask-adaptive)",
                            ("AutoAttack's APGD-CE and APGD-T with gradients through the smooth mask at "
                             "temperatures 0.1, 1 and 10, judged by the real model, per-image worst case")),
}


def attack_label(name: str) -> str:
    """The name a page gives attack ``name`` (a key of ``cas.ATTACKS``)."""
    return ATTACK_WORDS[name][0] if name in ATTACK_WORDS else cas.ATTACKS[name].label


def attack_help(name: str) -> str:
    """What attack ``name`` does, in one line (for the attack menu's help)."""
    return ATTACK_WORDS[name][1] if name in ATTACK_WORDS else cas.ATTACKS[name].description
