"""The Lecture page's story holds on the bundled models: every step's claim, run as the page runs it."""
from __future__ import annotations

import numpy as np
import pytest

import cas
from app.common import lecture_story as lecture


@pytest.fixture(scope="module")
def results(cifar_test):
    x, y = cifar_test
    assert cas.CLASSES[int(y[lecture.IMAGE])] == lecture.IMAGE_CLASS
    models = {name: cas.load_model(name) for name, _ in lecture.RUNS.values()}
    return lecture.run_all(models, x[lecture.IMAGE].numpy(), int(y[lecture.IMAGE]))


def test_the_image_is_found_in_any_order(cifar_test):
    x, y = (t.numpy() for t in cifar_test)
    assert lecture.find_image(x, y) == lecture.IMAGE
    order = np.random.default_rng(0).permutation(len(y))  # another copy's order (the torchvision download)
    assert order[lecture.find_image(x[order], y[order])] == lecture.IMAGE
    others = y != cas.CLASSES.index(lecture.IMAGE_CLASS)
    assert lecture.find_image(x[others], y[others]) is None


def test_attacks_come_from_the_registry():
    for name, choice in lecture.RUNS.values():
        if choice.attack != "none":
            spec = cas.ATTACKS[choice.attack]
            if choice.get("steps") is None:  # a protocol fixed by its preset (the authors' PGD)
                assert choice.get("eps") == pytest.approx(spec.preset["eps"] * 255)
                continue
            assert choice.get("steps") == spec.preset["steps"]
            assert choice.library_kwargs()["step_size"] == pytest.approx(spec.preset["step_size"])
    assert [r for r in lecture.RUNS if lecture.RUNS[r][1].attack == "soft_mask_pgd"] == ["cas_soft"]


@pytest.mark.parametrize("step", range(1, len(lecture.STEPS) + 1))
def test_each_step_claim_holds(results, step):
    holds, sentence = lecture.claim(step, results)
    assert holds, f"step {step} ({lecture.STEPS[step - 1].title}): {sentence}"


def test_the_story_in_plain_terms(results):
    label = results["std_clean"].label
    assert results["std_clean"].pred_nat == label  # (1) std right on the clean image
    assert results["std_pgd"].pred_adv != label  # (2) std wrong under PGD
    f = lecture.facts(results)
    assert f["at_pgd"]["rise"] < f["std_pgd"]["rise"]  # (3) AT: smaller magnitude rise
    first = lecture.facts(results, module=lecture.FIRST)["cas_pgd"]
    assert 2 * len(first["silenced"]) > len(first["attack_only"]) > 0  # (4) the mask silences the attack's channels
    assert results["cas_pgd"].pred_adv == label  # (5) at-cas right under plain PGD
    assert results["cas_soft"].pred_adv != label  # (6) at-cas wrong under soft-mask PGD


def test_channel_chart_threshold_line_signed_mask_and_top_k(results):
    from app.common import figures, image_attack

    view = results["cas_pgd"].modules[-1]
    order = image_attack.channel_order(view, "natural")
    fig = figures.channel_figure(view, order, True, threshold=10.0)
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    assert len(lines) == 2 * 2  # clean and adversarial, before and after the mask (not on the mask itself)
    clean_before = lines[0]
    assert clean_before.y[0] == pytest.approx(0.1 * float(np.abs(view.before[0]).max()))
    mask = next(t for t in fig.data if t.type == "bar" and t.name.startswith("mask"))
    assert mask.marker.colorscale[0][1] == figures.MASK_SCALE[0][1]  # diverging: negative weights purple
    assert mask.marker.cmin == -mask.marker.cmax  # zero in the middle of the scale
    narrow = figures.channel_figure(view, order, True, top_k=16)
    assert all(len(t.x) == 16 for t in narrow.data if t.type == "bar")


# -- the words describe the pictures ------------------------------------------------------------------

def _traces(fig, start: str):
    return [t for t in fig.data if (t.name or "").startswith(start)]


def _notes(fig) -> str:
    return " | ".join(a.text for a in fig.layout.annotations)


def _above(fig, bar_name: str, line_name: str, axis: str = "y") -> int:
    """Bars of ``bar_name`` on ``axis`` above that axis's ``line_name``: counted on the figure itself."""
    bars = next(t for t in fig.data if t.name == bar_name and t.yaxis == axis)
    line = next(t for t in fig.data if t.name == line_name and t.yaxis == axis)
    return int((np.abs(np.asarray(bars.y)) > line.y[0]).sum())


def _count(sentence: str, before: str) -> int:
    """The whole number just before ``before`` in ``sentence``."""
    import re
    return int(re.findall(r"(\d+)\W*" + re.escape(before), sentence.replace("**", ""))[0])


def test_step_numbers_are_drawn_on_their_charts(results):
    cards = {c["name"]: c["card"] for c in cas.available_models()}
    clean, adv = "switched-on line, clean image", "switched-on line, adversarial image"
    # 1: the switched-on channels counted on the chart, shaded, and in the words
    _, sentence = lecture.claim(1, results)
    (fig,) = lecture.figure(1, results)
    n = _above(fig, "clean image", clean)
    assert f"{n} of 128 channels are switched on" in sentence
    assert f"the {n} above the dotted line" in lecture.step_text(1, results, cards)
    assert fig.layout.shapes[0].x1 == pytest.approx(n - 0.5) and f"clean: {n} switched on" in _notes(fig)
    # 2: the channels switched on by the attack only, marked one triangle each; the total's rise
    _, sentence = lecture.claim(2, results)
    (fig,) = lecture.figure(2, results)
    (marks,) = _traces(fig, "switched on by the attack only")
    assert _count(sentence, "channels the clean image leaves off") == len(marks.x)
    f = lecture.facts(results)["std_pgd"]
    assert f"×{f['rise']:.2f}" in sentence and f"×{f['rise']:.2f}" in _notes(fig)
    assert f"adversarial: {_above(fig, 'adversarial image', adv)} switched on" in _notes(fig)
    # 1-3: one y axis for the magnitudes, standard and AT side by side on it
    ranges = [tuple(lecture.figure(s, results)[0].layout[a].range) for s in (1, 2) for a in ("yaxis",)]
    (fig3,) = lecture.figure(3, results)
    ranges += [tuple(fig3.layout.yaxis.range), tuple(fig3.layout.yaxis2.range)]
    assert len(set(ranges)) == 1
    _, sentence = lecture.claim(3, results)
    at_marks = [t for t in _traces(fig3, "switched on by the attack only") if t.yaxis == "y2"]
    assert f"{len(at_marks[0].x)} channels the clean image leaves off" in sentence
    # 4: before and after the mask, counted on the chart; the suppressed channels marked
    _, sentence = lecture.claim(4, results)
    (fig,) = lecture.figure(4, results)
    before, after = _above(fig, "adversarial image", adv, "y"), _above(fig, "adversarial image", adv, "y3")
    assert f"{before} of 128 channels switched on before the mask, {after} after it" in sentence.replace("**", "")
    (marks,) = _traces(fig, "silenced by the mask")
    (new,) = _traces(fig, "switched on by the attack only")
    plain = sentence.replace("**", "")
    assert f"switches on {len(new.x)} channels" in plain and f"silences {len(marks.x)} of them" in plain
    assert set(marks.x) <= set(new.x) and len(marks.x) > 0
    assert _traces(fig, "mask weight (row “deer”)")  # the head's guess names the mask drawn
    # 6: the channels the mask lets through after soft-mask PGD, pointed at
    _, sentence = lecture.claim(6, results)
    (fig,) = lecture.figure(6, results)
    (marks,) = [t for t in _traces(fig, "pass the mask on the attacked image only") if t.yaxis == "y2"]
    assert f"{len(marks.x)} channels the clean image's mask shuts now pass" in sentence
    assert fig.layout.yaxis.range == fig.layout.yaxis2.range


CAPTION_WORDS = {  # what a caption names -> the trace (or shape) that draws it
    "Blue": "clean image", "red": "adversarial image", "Dotted line": "switched-on line",
    "Orange triangles: channels switched on": "switched on by the attack only",
    "Orange triangles: channels that pass": "pass the mask", "Purple": "silenced by the mask",
}


@pytest.mark.parametrize("step", [1, 2, 3, 4, 6])
def test_every_legend_entry_a_caption_names_is_drawn(results, step):
    text = lecture.caption(step, results)
    figs = lecture.figure(step, results)
    names = {t.name for fig in figs for t in fig.data}
    for word, trace in CAPTION_WORDS.items():
        if word in text:
            assert any(n.startswith(trace) for n in names), (step, word, sorted(names))
    if "Shaded" in text:
        assert figs[0].layout.shapes and any(n.startswith("switched on, shaded") for n in names)
    for fig in figs:  # every line and mark drawn has its legend entry
        for name in {t.name for t in fig.data}:
            assert any(t.name == name and t.showlegend is not False for t in fig.data), name


def test_step_five_shows_the_head_through_the_attack_and_the_cards(cifar_test):
    from app.common import image_attack

    x, y = cifar_test
    model = cas.load_model("at-cas")
    _, choice = lecture.RUNS["cas_pgd"]
    values = dict(choice.values)
    runs = [image_attack.attack_image(model, x[lecture.IMAGE].numpy(),
                                      image_attack.AttackChoice(choice.attack, **{**values, "steps": k}),
                                      int(y[lecture.IMAGE])) for k in range(1, values["steps"] + 1)]
    t = lecture.trajectory(runs)
    assert len(t["steps"]) == values["steps"] + 1 and all(g == t["label"] for g in t["guesses"])
    cards = {c["name"]: c["card"] for c in cas.available_models()}
    rows = lecture.card_rows(cards)
    by = {(r[0], r[1]): r for r in rows}
    acc = cards["at-cas"]["accuracy"]
    assert by[("AT + CAS (at-cas)", "PGD-20")][2] == acc["pgd20"]
    assert by[("AT + CAS (at-cas)", "soft-mask PGD-20")][2] == acc["soft_mask_pgd20"]
    assert all(r[3] > 0 and r[4] > 0 for r in rows)  # standard errors and image counts from the cards
    text = lecture.step_text(5, {"cas_pgd": runs[-1]}, cards)
    gap = acc["pgd20"] - cards["at"]["accuracy"]["pgd20"]
    assert f"adds {gap:.0f} points" in text
