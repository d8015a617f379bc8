"""What the pages write next to each attack setting: its label, its help text and what one click of its
number field adds, by the setting's key (:attr:`cas.attacks.Knob.key`). The library says what a setting
is (its field, kind, bounds, default and scale); the words and the widget's step belong to the app.
An attack's own name and description are the library's (:data:`cas.ATTACKS`)."""
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


def attack_label(name: str) -> str:
    """The name a page gives attack ``name`` (a key of ``cas.ATTACKS``)."""
    return cas.ATTACKS[name].label


def attack_help(name: str) -> str:
    """What attack ``name`` does, in one line (for the attack menu's help)."""
    return cas.ATTACKS[name].description
