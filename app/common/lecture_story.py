"""The Lecture's story without Streamlit: its test image, its runs (model and attack), its six steps
and their terms, and everything each step's words, claim and chart say, computed from the runs'
results. ``app/views/lecture.py`` is the page that shows it; ``tests/test_lecture.py`` checks every
claim on the bundled models exactly as the page shows it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import cas
from cas import robustness

from . import figures, image_attack
from . import lecture_figures as lf

# The lecture's test image: an index of the CIFAR-10 test split, in the order of the copy the app loads
# (the offline image-folder copy, sorted by class); IMAGE_CLASS is its label, checked on the page.
# Chosen by scripts/lecture_images.py: of the first 400 test images of the fixed shuffle, 115 passed a
# batched screen (std right on the clean image and wrong under PGD, AT right, AT+CAS right under plain PGD
# and wrong under soft-mask PGD); the first six of those were run through every step exactly as the page
# runs them, with seeds 0, 1 and 2 and the attacks' gradients in bf16 and in fp32, and every claim held on
# all six. This deer had the largest smallest margin (0.99: the models are at least 99% sure of what each
# step needs them to say); the others were #5916 (dog, 0.95), #8506 (ship, 0.98), #8606 (ship, 0.94),
# #4869 (deer, 0.86), #137 (airplane, 0.85).
IMAGE = 4919
IMAGE_CLASS = "deer"
# The same image's colours averaged over a 4x4 grid (R, G, B planes), to find it in a CIFAR-10 copy that
# orders the test images differently (the torchvision download): see find_image.
IMAGE_COLOURS = (126, 148, 164, 147, 189, 212, 215, 215, 209, 233, 224, 227, 144, 173, 176, 167,
                 131, 159, 170, 154, 192, 212, 217, 219, 214, 234, 206, 226, 154, 161, 145, 169,
                 81, 102, 106, 102, 110, 126, 127, 140, 123, 146, 142, 146, 94, 100, 93, 103)
SAME_IMAGE = 3.0  # mean difference of those colours (out of 255) below which two copies are the same image
THRESHOLD = 10.0  # % of the strongest channel above which a channel counts as switched on

PGD = cas.ATTACKS["pgd"]
SOFT = cas.ATTACKS["soft_mask_pgd"]
JOINT = cas.ATTACKS["joint_pgd"]
AUTHORS = cas.ATTACKS["authors_pgd"]
# the bundled models by the names a class understands
MODEL_NAMES = {"std": "standard", "at": "adversarially trained", "at-cas": "AT + CAS"}


def model_name(model: str) -> str:
    """'adversarially trained (`at`)': the human name beside the short one."""
    return f"{MODEL_NAMES.get(model, model)} (`{model}`)"


def _choice(spec) -> image_attack.AttackChoice:
    """The attack as the evaluator runs it (its registry preset: 20 steps of 2/255), ε = 8/255, seed 0."""
    preset = spec.preset
    return image_attack.AttackChoice(spec.name, eps=8.0, steps=preset["steps"], step=preset["step_size"] * 255)


def _authors_choice() -> image_attack.AttackChoice:
    """The authors' protocol as the registry defines it (ε 0.031, 20 steps of 0.003, fixed by the preset)."""
    return image_attack.AttackChoice(AUTHORS.name, eps=AUTHORS.preset["eps"] * 255)


# run name -> (bundled model, attack)
RUNS = {
    "std_clean": ("std", image_attack.AttackChoice(image_attack.NONE)),
    "std_pgd": ("std", _choice(PGD)),
    "at_pgd": ("at", _choice(PGD)),
    "cas_pgd": ("at-cas", _choice(PGD)),
    "cas_soft": ("at-cas", _choice(SOFT)),
    "cas_joint": ("at-cas", _choice(JOINT)),
    "cas_authors": ("at-cas", _authors_choice()),
}
# the card key of each attack on the last step (the models' cards hold accuracies on 1,000 test images)
PROTOCOLS = (("cas_authors", "authors_pgd20"), ("cas_joint", "joint_pgd20"), ("cas_soft", "soft_mask_pgd20"))


@dataclass(frozen=True)
class Step:
    title: str
    run: str  # the run of RUNS this step shows
    needs: tuple[str, ...]  # the runs its claim, words and chart look at
    terms: tuple[str, ...] = ()  # the words of GLOSSARY it uses

    def runs(self) -> dict[str, tuple[str, image_attack.AttackChoice]]:
        """The runs of :data:`RUNS` this step shows or looks at: run name -> (model name, attack)."""
        return {run: spec for run, spec in RUNS.items() if run in self.needs or run == self.run}


STEPS = [
    Step("A clean image and its channels", "std_clean", ("std_clean", "std_pgd", "at_pgd"), ("channel", "switched on")),
    Step("An attack flips it and switches other channels on", "std_pgd", ("std_clean", "std_pgd", "at_pgd"),
         ("PGD", "ε", "L∞", "switched on")),
    Step("Adversarial training lowers the magnitudes, not the switching", "at_pgd", ("std_pgd", "at_pgd"),
         ("adversarial training", "switched on")),
    Step("CAS: a mask chosen by a small head", "cas_pgd", ("cas_pgd",), ("auxiliary head", "mask", "argmax")),
    Step("Plain PGD fails on the CAS model", "cas_pgd", ("cas_pgd",), ("PGD", "argmax", "auxiliary head")),
    Step("Soft-mask PGD succeeds: gradient masking", "cas_soft", ("cas_pgd", "cas_soft", "cas_joint", "cas_authors"),
         ("soft mask", "gradient masking", "argmax", "mask")),
]

GLOSSARY = {
    "channel": "One feature detector of a convolutional layer. Its map, averaged over the image, gives one "
               "number per channel: the height of one bar.",
    "switched on": f"A channel counts as switched on when its average activation exceeds {THRESHOLD:g}% of "
                   "the image's strongest channel (the dotted line of the same colour).",
    "PGD": "Projected gradient descent: repeat a small step in the direction that raises the model's loss, "
           "then clip the change back into the budget ε.",
    "ε": "The attack's budget: no pixel value may change by more than ε (here 8/255 of the 0-255 range).",
    "L∞": "The largest change of any single pixel value: the norm that ε bounds.",
    "adversarial training": "Training on attacked images (PGD against the model being trained) instead of clean ones.",
    "auxiliary head": "A small linear classifier inside the CAS module: it guesses the class from the block's "
                      "channel averages, and its guess picks the mask.",
    "mask": "One row of the auxiliary head's weights, one weight per channel; each channel is multiplied by "
            "its weight. Near 0 silences a channel; negative flips its sign.",
    "argmax": "Taking the class with the highest score. The choice jumps from one class to another, so a "
              "gradient, which only sees small smooth changes, cannot see it.",
    "soft mask": "A smooth stand-in for the argmax mask: the rows of every class mixed by the head's "
                 "probabilities. The attack follows its gradient; the real model judges every step.",
    "gradient masking": "A defence that hides the gradient an attack follows, so gradient attacks fail "
                        "without the model being robust.",
}


# -- what each step's words and chart say, from its results (no Streamlit) ------------------------------

def _on(values: np.ndarray, threshold: float) -> np.ndarray:
    """Which channels of one image (K,) are switched on: above ``threshold`` % of the strongest one."""
    a = np.abs(values)
    return a > threshold / 100 * a.max()


FIRST = 0  # step 4 shows the first CAS module: where plain PGD switches channels on (the last: 1 of 24)


def facts(results: dict[str, image_attack.LabResult], threshold: float = THRESHOLD, module: int = -1) -> dict:
    """Every number a step's words or chart show, by run: channels switched on (clean, adversarial, by the
    attack only, suppressed by the mask), totals and heights, the CAS head's guess, at the CAS module
    ``module`` (the last by default; for a model without CAS, the last block). Positions are in the
    clean image's order (strongest first), the order the charts draw."""
    out = {}
    for run, r in results.items():
        v = r.modules[module if r.modules[0].is_cas else -1]
        order = image_attack.channel_order(v, "natural")
        b = v.before[:, order]
        on_nat, on_adv = _on(b[0], threshold), _on(b[1], threshold)
        f = {"order": order, "channels": b.shape[1], "on_nat": int(on_nat.sum()), "on_adv": int(on_adv.sum()),
             "total_nat": float(np.abs(b[0]).sum()), "total_adv": float(np.abs(b[1]).sum()),
             "peak_nat": float(np.abs(b[0]).max()), "peak_adv": float(np.abs(b[1]).max()),
             "attack_only": np.flatnonzero(on_adv & ~on_nat)}
        f["rise"] = f["total_adv"] / max(f["total_nat"], 1e-12)
        top = np.flatnonzero(on_nat)  # the channels the clean image uses
        f["top_lower"] = int((np.abs(b[1][top]) < np.abs(b[0][top])).sum())
        if v.is_cas:
            a = v.after[:, order]
            after_nat, after_adv = _on(a[0], threshold), _on(a[1], threshold)
            f.update(after_nat=int(after_nat.sum()), after_adv=int(after_adv.sum()),
                     suppressed=np.flatnonzero(on_adv & ~after_adv),
                     silenced=np.flatnonzero(on_adv & ~on_nat & ~after_adv),
                     passed=np.flatnonzero(after_adv & ~after_nat),
                     head_nat=int(v.aux_probs[0].argmax()), head_adv=int(v.aux_probs[1].argmax()),
                     head_prob_adv=float(v.aux_probs[1].max()), heads=len(r.modules),
                     mask_suppressed=v.mask[1][order][np.flatnonzero(on_adv & ~after_adv)])
        out[run] = f
    return out


def card_figures(cards: dict[str, dict]) -> dict:
    """The bundled models' accuracies from their cards (card key -> (accuracy, standard error, images)),
    by model; absent figures are left out."""
    out = {}
    for name, card in cards.items():
        evaluation = card.get("evaluation") or {}
        acc = card.get("accuracy") or {}
        err = card.get("stderr") or evaluation.get("stderr") or {}
        counts = card.get("counts") or evaluation.get("counts") or {}
        n_default = counts.get("clean", evaluation.get("n", 0))
        rows = {}
        for key, value in acc.items():
            n = int(counts.get(key, n_default) or 0)
            se = err.get(key)
            if se is None and n:
                se = robustness.standard_error(float(value), n)
            rows[key] = (float(value), float(se or 0.0), n)
        out[name] = rows
    return out


def _pct(p: float) -> str:
    return f"{100 * p:.0f}%"


def claim(step: int, results: dict[str, image_attack.LabResult], threshold: float = THRESHOLD) -> tuple[bool, str]:
    """Step ``step``'s claim (1-based): whether it holds, and the sentence the page shows in its box.
    ``results``: run name -> result, at least the step's :attr:`Step.needs`."""
    c = cas.CLASSES
    f = facts(results, threshold)
    if step == 1:
        r, g = results["std_clean"], f["std_clean"]
        return (r.pred_nat == r.label,
                f"The standard model says **{c[r.pred_nat]}** ({_pct(r.probs[0, r.pred_nat])}); the image "
                f"shows a {c[r.label]}. {g['on_nat']} of {g['channels']} channels are switched on (shaded).")
    if step == 2:
        r, g = results["std_pgd"], f["std_pgd"]
        return (r.pred_nat == r.label and r.pred_adv != r.label and g["rise"] > 1.2 and len(g["attack_only"]) > 0,
                f"The attack succeeded: the standard model now says **{c[r.pred_adv]}** "
                f"({_pct(r.probs[1, r.pred_adv])}). Total activation {g['total_nat']:.1f} → {g['total_adv']:.1f} "
                f"(×{g['rise']:.2f}); {len(g['attack_only'])} channels the clean image leaves off are switched on "
                f"(orange triangles).")
    if step == 3:
        r, g, s = results["at_pgd"], f["at_pgd"], f["std_pgd"]
        return (r.pred_adv != r.label and g["rise"] < s["rise"] and g["peak_adv"] < s["peak_adv"]
                and len(g["attack_only"]) > 0,
                f"The attack still succeeded: the adversarially trained model says **{c[r.pred_adv]}** "
                f"({_pct(r.probs[1, r.pred_adv])}). Its strongest channel under attack {g['peak_adv']:.2f} "
                f"(standard: {s['peak_adv']:.2f}); total ×{g['rise']:.2f} (standard: ×{s['rise']:.2f}); but "
                f"{len(g['attack_only'])} channels the clean image leaves off are switched on "
                f"(standard: {len(s['attack_only'])}).")
    r, g = results["cas_pgd"], f["cas_pgd"]
    if step == 4:
        g = facts(results, threshold, FIRST)["cas_pgd"]
        new, silenced = len(g["attack_only"]), len(g["silenced"])
        return (new > 0 and 2 * silenced > new and g["head_adv"] == r.label,
                f"The attack switches on **{new}** channels the clean image leaves off (orange triangles); the "
                f"head guesses **{c[g['head_adv']]}** ({_pct(g['head_prob_adv'])}), so the mask is "
                f"{c[g['head_adv']]}'s row, and it silences **{silenced}** of them (purple). In all, "
                f"{g['on_adv']} of {g['channels']} channels switched on before the mask, {g['after_adv']} after it.")
    if step == 5:
        return (r.pred_nat == r.label and r.pred_adv == r.label,
                f"The attack failed: under plain PGD the CAS model still says **{c[r.pred_adv]}** "
                f"({_pct(r.probs[1, r.pred_adv])}), and its head never leaves {c[g['head_adv']]}.")
    r, g = results["cas_soft"], f["cas_soft"]
    return (r.pred_adv != r.label and g["head_adv"] != r.label,
            f"The attack succeeded: under soft-mask PGD, same budget and steps, the CAS model says "
            f"**{c[r.pred_adv]}** ({_pct(r.probs[1, r.pred_adv])}); its head guesses **{c[g['head_adv']]}**, "
            f"and {len(g['passed'])} channels the clean image's mask shuts now pass (orange triangles).")


def step_text(step: int, results: dict, cards: dict[str, dict], threshold: float = THRESHOLD) -> str:
    """The step's paragraph: what its picture shows, with the numbers of ``results`` and of the cards."""
    c = cas.CLASSES
    f = facts(results, threshold)
    k = card_figures(cards)
    if step == 1:
        g = f["std_clean"]
        return ("A network sees a 32×32 image. Inside, its last block has "
                f"{g['channels']} **channels**: feature detectors, each giving one number for the whole image (its "
                "average activation). The chart shows the standard model on a clean test image: one blue bar per "
                "channel, strongest first. Some channels carry the image: the "
                f"{g['on_nat']} above the dotted line count as **switched on** (shaded); the rest stay nearly silent.")
    if step == 2:
        g = f["std_pgd"]
        return ("An **adversarial example** is an image changed too little to see, chosen to make the model "
                "wrong. **PGD** changes every pixel by at most ε = 8/255, in the direction that most increases "
                "the model's loss (20 steps). The standard model is fooled. Inside, look at two things. On the "
                f"{g['on_nat']} channels the clean image uses most (left), the red bars are mostly *lower* than the "
                f"blue ({g['top_lower']} of {g['on_nat']}). To the right, where the clean image is silent, "
                f"{len(g['attack_only'])} other channels are **switched on** (orange triangles), some strongly: the "
                f"tallest red bar is {g['peak_adv']:.1f}, the clean image's strongest {g['peak_nat']:.1f}. In total "
                f"the activation grows ×{g['rise']:.2f}. Both of the paper's findings at once: adversarial "
                "examples switch on **other channels**, with **larger magnitudes**.")
    if step == 3:
        g, s = f["at_pgd"], f["std_pgd"]
        return ("**Adversarial training** (AT) trains the model on attacked images. Left, the standard model; "
                "right, the adversarially trained one, under the same attack and **on the same axis**. AT's bars "
                f"are much lower (strongest {g['peak_adv']:.2f} against {s['peak_adv']:.2f}) and the total barely "
                f"moves (×{g['rise']:.2f} against ×{s['rise']:.2f}): the magnitude problem is fixed. But the "
                f"attack still switches on {len(g['attack_only'])} channels the clean image leaves off (orange "
                "triangles): the paper's second finding, which AT leaves open. And AT is still fooled here.")
    g = f["cas_pgd"]
    if step == 4:
        g = facts(results, threshold, FIRST)["cas_pgd"]
        return ("**Channel-wise Activation Suppressing** (CAS) adds a small classifier, the **auxiliary head**, "
                "inside the block. Its guess of the class picks one row of its weights, and every channel is "
                "multiplied by its weight in that row: the **mask** (middle panel). A weight near zero silences a "
                f"channel. Plain PGD attacks the AT + CAS model: before the mask (top) it switches on "
                f"{len(g['attack_only'])} channels the clean image leaves off (orange triangles), as it did on the "
                f"other models. The head still guesses {c[g['head_adv']]}, and {c[g['head_adv']]}'s row gives "
                f"{len(g['silenced'])} of those channels a weight near zero (purple): after the mask (bottom) they "
                f"are silent. In all the mask keeps {g['after_adv']} of the {g['on_adv']} switched-on channels. "
                f"(This model has {g['heads']} CAS modules, one after each block of its last stage; this chart "
                "shows the first, where the attack's new channels appear. At the second, just before the "
                "classifier, the next steps look.)")
    if step == 5:
        at, ac = k.get("at", {}), k.get("at-cas", {})
        text = ("The CAS model keeps the right answer under plain PGD. The chart shows why: through all 20 "
                f"steps the head's guess, and so the mask, stays on {c[g['head_adv']]}. The mask is chosen by an "
                "**argmax** over the head's guess: a gradient cannot see that choice switch, so plain PGD pushes "
                "on a model whose mask never changes.")
        if "pgd20" in at and "pgd20" in ac:
            gap = ac["pgd20"][0] - at["pgd20"][0]
            text += (f" On the models' cards ({ac['pgd20'][2]:,} test images), plain PGD-20 says CAS adds "
                     f"{gap:.0f} points of robustness: {ac['pgd20'][0]:.1f}% against AT's {at['pgd20'][0]:.1f}%.")
        return text + " A failed attack is not proof of robustness."
    s = f["cas_soft"]
    ac, at = k.get("at-cas", {}), k.get("at", {})
    text = ("**Soft-mask PGD** replaces the argmax row by a softmax-weighted mix of all rows for the gradient "
            "only; the real model judges every step. It sees how the mask would switch, flips the head's guess "
            f"to {c[s['head_adv']]}, and another row becomes the mask: the attack's channels pass.")
    if "soft_mask_pgd20" in ac and "pgd20" in ac:
        text += (f" Not one image: on the card's {ac['soft_mask_pgd20'][2]:,} test images soft-mask PGD-20 leaves "
                 f"AT + CAS {ac['soft_mask_pgd20'][0]:.1f}% accurate, against {ac['pgd20'][0]:.1f}% under plain PGD-20")
        text += (f", below AT's {at['pgd20'][0]:.1f}%." if "pgd20" in at else ".")
    return text + (" The robustness was **gradient masking**: honest evaluation needs **adaptive attacks** "
                   "built for the defence.")


def caption(step: int, results: dict, threshold: float = THRESHOLD) -> str:
    """What the chart's colours, lines and marks mean, for this step's chart only."""
    line = f"Dotted line: {threshold:g}% of the image's strongest channel; a bar above it counts as switched on."
    if step == 1:
        return (f"Blue bars: the clean image's channels, strongest first. {line} Shaded: the switched-on channels. "
                "The y axis is the same in steps 1 to 3.")
    if step == 2:
        return ("Blue: clean image; red: adversarial image; both in the clean image's order. Dotted lines: "
                f"{threshold:g}% of each image's strongest channel (blue for clean, red for adversarial). Orange "
                "triangles: channels switched on by the attack only. The y axis is the same in steps 1 to 3.")
    if step == 3:
        return ("Left: standard model; right: adversarially trained; one y axis for both (and for steps 1 and 2). "
                "Blue: clean image; red: adversarial. Dotted lines: "
                f"{threshold:g}% of each image's strongest channel. Orange triangles: channels switched on by the "
                "attack only.")
    if step == 4:
        return ("The first CAS module. Top: its block's channels before the mask; middle: the mask, the weight "
                "each channel is multiplied by (the row of the head's guess); bottom: what passes on (top × "
                f"middle). Blue: clean image; red: adversarial. {line} Orange triangles: channels switched on by "
                "the attack only. Purple: those of them the mask silences, and their weights.")
    if step == 5:
        return ("Each point: the attack stopped after that many steps (step 0: the clean image), the same attack "
                "as in step 4. Solid: the final prediction's probability of the true class; dashed: the CAS head's. "
                "Bars below: accuracies from the models' cards with their standard errors.")
    return ("Left: plain PGD; right: soft-mask PGD; the CAS model's last module after its mask (what passes on), "
            f"one y axis. Blue: clean image; red: adversarial. {line} Orange triangles: channels that pass the mask "
            "on the attacked image but not on the clean one.")


HEADROOM = 1.45  # the y axis reaches this many times the tallest bar: room for the panel's notes


def _y_range(results: dict, runs: tuple[str, ...], stage: str = "before", module: int = -1) -> tuple[float, float]:
    top = max(float(np.abs(getattr(results[r].modules[module], stage)).max()) for r in runs if r in results)
    return (0.0, HEADROOM * top)


def _marks(name: str, positions: np.ndarray, values: np.ndarray, colour: str, lift: float) -> lf.Marks:
    positions = np.asarray(positions, dtype=int)
    return lf.Marks(f"{name} ({len(positions)})", positions, np.abs(values[positions]) + lift, colour)


def _switch_lines(values: np.ndarray, threshold: float) -> list[lf.Line]:
    """The switched-on lines of the clean (row 0) and adversarial (row 1) images' channel values."""
    return [lf.Line(f"switched-on line, {who} image", threshold / 100 * float(np.abs(values[i]).max()), colour)
            for i, (who, colour) in enumerate((("clean", figures.NATURAL), ("adversarial", figures.ADVERSARIAL)))]


def _before_panel(title: str, r: image_attack.LabResult, g: dict, y_range, threshold: float, attack_only: bool,
                  shade: bool = False, module: int = -1) -> lf.Panel:
    v = r.modules[module]
    b = v.before[:, g["order"]]
    bars = [lf.Series("clean image", b[0], figures.NATURAL)]
    lines = [lf.Line("switched-on line, clean image", threshold / 100 * float(np.abs(b[0]).max()), figures.NATURAL)]
    notes = [f"clean: {g['on_nat']} switched on"]
    if r.attacked:
        bars.append(lf.Series("adversarial image", b[1], figures.ADVERSARIAL))
        lines.append(lf.Line("switched-on line, adversarial image", threshold / 100 * float(np.abs(b[1]).max()),
                             figures.ADVERSARIAL))
        notes.append(f"adversarial: {g['on_adv']} switched on")
    marks = []
    if attack_only and r.attacked:
        lift = 0.04 * y_range[1]
        marks.append(_marks("switched on by the attack only", g["attack_only"], b[1], lf.SWITCHED_ON_BY_ATTACK, lift))
        notes.append(f"switched on by the attack only: {len(g['attack_only'])}")
    return lf.Panel(title, bars, lines, marks, notes, shade=g["on_nat"] if shade else 0, y_range=y_range)


def figure(step: int, results: dict, threshold: float = THRESHOLD) -> list:
    """The step's channel figures (Plotly), built from the same :func:`facts` as its words."""
    f = facts(results, threshold)
    x_title = "the last block's channels, sorted by the clean image's activation (strongest first)"
    shared = _y_range(results, ("std_clean", "std_pgd", "at_pgd")) if step <= 3 else None
    if step == 1:
        p = _before_panel("Standard model (std), clean image", results["std_clean"], f["std_clean"], shared,
                          threshold, False, shade=True)
        return [lf.channel_panels([p], x_title)]
    if step == 2:
        p = _before_panel("Standard model (std) under PGD", results["std_pgd"], f["std_pgd"], shared, threshold, True)
        p.notes.append(f"total activation ×{f['std_pgd']['rise']:.2f}")
        return [lf.channel_panels([p], x_title, height=380)]
    if step == 3:
        panels = []
        for run, title in (("std_pgd", "Standard (std) under PGD"), ("at_pgd", "Adversarially trained (at) under PGD")):
            p = _before_panel(title, results[run], f[run], shared, threshold, True)
            p.notes.append(f"total ×{f[run]['rise']:.2f}")
            panels.append(p)
        return [lf.channel_panels(panels, "channels, clean image's order", side_by_side=True, height=440, top=105)]
    if step == 5:  # its pictures are the head's guess through the attack and the cards (see :func:`evidence`)
        return []
    if step == 4:
        r, g = results["cas_pgd"], facts(results, threshold, FIRST)["cas_pgd"]
        v = r.modules[FIRST]
        before = _before_panel("Before the mask (AT + CAS, first CAS module)", r, g,
                               _y_range(results, ("cas_pgd",), module=FIRST), threshold, True, module=FIRST)
        lift = 0.04 * before.y_range[1]
        before.marks.append(_marks("silenced by the mask", g["silenced"], v.before[1][g["order"]],
                                   lf.SUPPRESSED, 2.5 * lift))
        x_title = "the first CAS module's channels, sorted by the clean image's activation (strongest first)"
        mask = v.mask[1][g["order"]]
        head = cas.CLASSES[g["head_adv"]]
        mask_panel = lf.Panel(f"The mask: row “{head}” of the head's weights (the head's guess)",
                              [lf.Series(f"mask weight (row “{head}”)", mask, lf.MASK_BAR)],
                              marks=[lf.Marks(f"weights of the silenced channels ({len(g['silenced'])})",
                                              g["silenced"], mask[g["silenced"]], lf.SUPPRESSED, "diamond")],
                              y_title="weight")
        a = v.after[:, g["order"]]
        after = lf.Panel("After the mask (= before × mask)",
                         [lf.Series("clean image", a[0], figures.NATURAL),
                          lf.Series("adversarial image", a[1], figures.ADVERSARIAL)],
                         _switch_lines(a, threshold),
                         notes=[f"clean: {g['after_nat']} switched on", f"adversarial: {g['after_adv']} switched on"],
                         y_range=_y_range(results, ("cas_pgd",), "after", FIRST))
        return [lf.channel_panels([before, mask_panel, after], x_title, height=740, top=120)]
    out = []
    y = _y_range(results, ("cas_pgd", "cas_soft"), "after")
    panels = []
    for run, title in (("cas_pgd", "Plain PGD: after the mask"), ("cas_soft", "Soft-mask PGD: after the mask")):
        r, g = results[run], f[run]
        a = r.modules[-1].after[:, g["order"]]
        head = cas.CLASSES[g["head_adv"]]
        p = lf.Panel(f"{title} (mask “{head}”)",
                     [lf.Series("clean image", a[0], figures.NATURAL),
                      lf.Series("adversarial image", a[1], figures.ADVERSARIAL)],
                     _switch_lines(a, threshold),
                     [_marks("pass the mask on the attacked image only", g["passed"], a[1], lf.SWITCHED_ON_BY_ATTACK,
                             0.04 * y[1])],
                     [f"adversarial: {g['after_adv']} switched on", f"passing only under attack: {len(g['passed'])}"],
                     y_range=y)
        panels.append(p)
    out.append(lf.channel_panels(panels, "channels, clean image's order", side_by_side=True, height=460, top=100))
    return out


def trajectory(steps_results: list[image_attack.LabResult]) -> dict:
    """The true class's probability after each number of PGD steps (0: the clean image), for the final
    prediction and for the last CAS head, and the head's guesses."""
    label = steps_results[0].label
    final = [float(steps_results[0].probs[0, label])] + [float(r.probs[1, label]) for r in steps_results]
    head = [float(steps_results[0].modules[-1].aux_probs[0, label])] + [
        float(r.modules[-1].aux_probs[1, label]) for r in steps_results]
    guesses = [int(r.modules[-1].aux_probs[1].argmax()) for r in steps_results]
    return {"steps": list(range(len(final))), "final": final, "head": head, "guesses": guesses, "label": label}


CARD_BARS = (("at", "pgd20"), ("at-cas", "pgd20"), ("at-cas", "joint_pgd20"), ("at-cas", "soft_mask_pgd20"))
CARD_COLOURS = {"PGD-20": "#9e9e9e", "joint PGD-20": "#e377c2", "soft-mask PGD-20": lf.ATTACK_SUCCEEDS}


def card_rows(cards: dict[str, dict]) -> list[tuple[str, str, float, float, int]]:
    """(model label, attack column, accuracy, standard error, images) of :data:`CARD_BARS` found in the cards."""
    k = card_figures(cards)
    rows = []
    for model, key in CARD_BARS:
        if key in k.get(model, {}):
            acc, se, n = k[model][key]
            rows.append((f"{MODEL_NAMES[model]} ({model})", robustness.column(key), acc, se, n))
    return rows


def run_all(loaded: dict, x: np.ndarray, label: int) -> dict[str, image_attack.LabResult]:
    """Every run of :data:`RUNS` on one image, without Streamlit (``loaded``: model name -> model)."""
    return {name: image_attack.attack_image(loaded[model], x, choice, label) for name, (model, choice) in RUNS.items()}


def colours(x: np.ndarray) -> np.ndarray:
    """Images (N, 3, 32, 32) -> their colours averaged over a 4x4 grid, (N, 48)."""
    return x.reshape(len(x), 3, 4, 8, 4, 8).astype(np.float32).mean((3, 5)).reshape(len(x), -1)


def find_image(x_all: np.ndarray, y_all: np.ndarray) -> int | None:
    """The lecture image's index in this CIFAR-10 copy: :data:`IMAGE` when it is the same picture, else
    the picture whose coarse colours match (another copy's order, or its JPEG rounding); None if absent."""
    target = np.asarray(IMAGE_COLOURS, dtype=np.float32)
    if IMAGE < len(y_all) and np.abs(colours(x_all[IMAGE:IMAGE + 1])[0] - target).mean() < SAME_IMAGE:
        return IMAGE
    pool = np.flatnonzero(y_all == cas.CLASSES.index(IMAGE_CLASS))
    if not len(pool):
        return None
    distance = np.abs(colours(x_all[pool]) - target).mean(1)
    best = int(distance.argmin())
    return int(pool[best]) if distance[best] < SAME_IMAGE else None


TRAJECTORY = "cas_pgd"  # the run that step 5 follows through its steps


def trajectory_choices() -> list[image_attack.AttackChoice]:
    """:data:`TRAJECTORY`'s attack stopped after 1, 2, ... all its steps (each the same attack, cut short)."""
    choice = RUNS[TRAJECTORY][1]
    values = dict(choice.values)
    return [image_attack.AttackChoice(choice.attack, **{**values, "steps": k}) for k in range(1, values["steps"] + 1)]
