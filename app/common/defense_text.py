"""What the pages say about each member of the channel-defence family (:data:`cas.family.DEFENSES`):
how its mask is chosen, what its mask and its output are, and what its auxiliary head does. The library
says what a defence is (its label, points, whether its mask is element-wise); the words belong to the app."""
from __future__ import annotations

from dataclasses import dataclass

from cas.family import DEFENSES


@dataclass(frozen=True)
class DefenseText:
    """A defence's words: ``rule`` (how it picks its mask, after "This model ..."), ``mask`` (what its
    mask does, for the chart's caption), ``mask_title`` and ``after_title`` (the chart's panels) and
    ``heads`` (what its auxiliary heads are and do, for the probability chart's caption)."""

    rule: str
    mask: str
    mask_title: str
    after_title: str
    heads: str


ELEMENT_WISE_NOTE = ("The bars show each channel's spatial mean of that mask; the heatmaps below show it "
                     "position by position.")  # for the Attack Lab's caption of an element-wise mask

TEXT = {
    "cas": DefenseText(
        rule="picks its CAS mask with an *argmax*: the weight row of the class its own head guesses",
        mask="“Suppression” is a multiplication: each channel is multiplied by a learned, signed weight (the "
             "row of the class the CAS head guesses); a weight near 0 silences the channel, a negative one "
             "flips its sign.",
        mask_title="CAS mask: the weight each channel is multiplied by",
        after_title="After the mask (= before × mask)",
        heads="The auxiliary heads are the small classifiers inside the CAS modules. Their guess picks the "
              "mask, so an attack that fools them also changes which channels pass."),
    "cifs": DefenseText(
        rule="picks its CIFS mask from the two top classes of its probe (an *argmax*), on features it hides "
             "from the gradient",
        mask="CIFS multiplies each channel by its importance: how much the channel raises the probe's two top "
             "logits, made into weights by a softmax over the channels (all positive, summing to 1); a channel "
             "that matters little gets a weight near 0.",
        mask_title="CIFS mask: each channel's importance (softmax over the channels)",
        after_title="After the mask (= before × mask)",
        heads="The auxiliary heads are the probes inside the CIFS modules. Their two top classes pick the "
              "mask, so an attack that changes them also changes which channels pass."),
    "ewas": DefenseText(
        rule="picks its EWAS mask with an *argmax*: the weight row of the class its auxiliary head guesses",
        mask="EWAS multiplies every element of the feature map (each channel at each position) by a learned, "
             "signed weight: the row of the class its auxiliary head guesses, laid out in the map's shape.",
        mask_title="EWAS mask, spatial mean per channel (the mask is element-wise)",
        after_title="After the mask (spatial mean of map × mask)",
        heads="The auxiliary head is the small classifier inside the EWAS module. Its guess picks the mask, "
              "so an attack that fools it also changes the mask."),
    "fsr": DefenseText(
        rule="computes its FSR mask with a very steep sigmoid (temperature 0.1), nearly a step, whose "
             "gradient is close to 0 almost everywhere",
        mask="FSR's separation net scores every element of the feature map (each channel at each position); a "
             "steep sigmoid makes the scores a mask between 0 and 1. The part it keeps (mask near 1) passes as "
             "it is; the rest is recalibrated by a second net and added back.",
        mask_title="FSR mask, spatial mean per channel (the mask is element-wise)",
        after_title="After FSR (kept part + recalibrated rest)",
        heads="The auxiliary head is the small classifier inside the FSR module: it classifies the part the "
              "mask keeps (it trains the separation; it does not pick the mask)."),
}
assert set(TEXT) == set(DEFENSES), "every defence needs its words"


def text_of(defense: str | None) -> DefenseText:
    """The words of ``defense`` (a key of :data:`cas.family.DEFENSES`; None or unknown: CAS's)."""
    return TEXT.get(defense or "cas", TEXT["cas"])


def label_of(defense: str | None) -> str:
    """The label a page shows for ``defense`` ("CAS", "CIFS", "EWAS", "FSR"; CAS's for None)."""
    return DEFENSES.get(defense or "cas", DEFENSES["cas"]).label


FAMILY = ", ".join(d.label for d in DEFENSES.values())  # "CAS, CIFS, EWAS, FSR"
