"""The Lecture page's story holds on the bundled models: every step's claim, run as the page runs it."""
from __future__ import annotations

import numpy as np
import pytest

import cas
from app.views import lecture


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
    std_rise = lecture.figures_of(results["std_pgd"])["rise"]
    assert lecture.figures_of(results["at_pgd"])["rise"] < std_rise  # (3) AT: smaller magnitude rise
    f = lecture.figures_of(results["cas_pgd"])
    assert f["active_after_adv"] < f["active_before_adv"]  # (4) the mask suppresses channels
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
