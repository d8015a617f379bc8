"""The bundled model zoo itself (``pretrained/``): every model loads by name and matches its card, the
CAS-adaptive attack is at least as strong as plain PGD on ``at-cas``, the paper's channel effects on
the real ``std`` / ``at`` / ``at-cas`` (reported; asserted only where the effect is robust), and the
Attack Lab's first view (``at-cas``, an image it gets right, an attack that fools it)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cas import AttackSettings, data, load_model, read_card, run_attack
from cas.attacks import margin
from cas.checkpoint import pretrained_dir, pretrained_index, read_model_card
from cas.stats import channel_statistics, paper_effects, role_of

ROOT = Path(__file__).resolve().parent.parent

ZOO = ("std", "at", "at-cas", "trades", "trades-cas", "mart", "mart-cas")
FAMILY = ("at-cifs", "at-ewas", "at-fsr")  # CAS's relatives (cas.family), evaluated with their own protocols
INDEX = {e["name"]: e for e in pretrained_index(ROOT / "pretrained")}


@pytest.fixture(autouse=True)
def _bundled(monkeypatch):
    """These tests look at the real bundled folder, whatever other tests point the app at."""
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(ROOT / "pretrained"))


@pytest.fixture(scope="module")
def test_images(cifar_test):
    return data.test_subset(1000)


def accuracy(model, x, y) -> float:
    """Percent correct on images ``x`` (uint8, or float in [0, 1])."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    with torch.no_grad():
        return 100 * float((model(x).argmax(1) == y).float().mean())


def test_the_zoo_is_complete_and_small():
    assert pretrained_dir() == ROOT / "pretrained"
    assert sorted(INDEX) == sorted(ZOO + FAMILY), "pretrained/index.json must list the ten bundled models"
    total = sum((ROOT / "pretrained" / e["file"]).stat().st_size for e in INDEX.values())
    assert total < 45 * 1024**2
    for name, entry in INDEX.items():
        card = read_card(ROOT / "pretrained" / entry["file"])
        assert card["name"] == name and card["dtype"] == "float16"
        assert card["accuracy"] == entry["accuracy"], "index.json and the card disagree"
        ev = card["evaluation"]
        for key, acc in card["accuracy"].items():  # every figure comes with its standard error
            n = ev["counts"][key]
            assert ev["stderr"][key] == pytest.approx(100 * math.sqrt(acc / 100 * (1 - acc / 100) / n), abs=0.01)
        if name in FAMILY:  # its authors' own attacks, the adaptive ones, Square and the indicators
            defense = card["arch_kwargs"]["defense"]
            assert entry["defense"] == defense and name == f"at-{defense}"
            own = {k for k in card["accuracy"] if k.startswith(defense + "_")}
            assert len(own) >= 3 and ev["n"] >= 500, name
            assert {"pgd20", "joint_pgd20", "soft_mask_pgd20", "adaptive_autoattack", "square"} <= set(card["accuracy"])
            assert {"pgd", "joint_pgd", "soft_mask_pgd"} <= set(ev["indicators"]), name
            acc = card["accuracy"]
            assert ev["counts"]["worst_case"] == ev["counts"]["adaptive_autoattack"] == ev["counts"]["square"] >= 200
            assert acc["worst_case"] <= min(acc["adaptive_autoattack"], acc["square"])
            continue
        assert ev["n"] >= 1000 and ev["counts"]["autoattack"] >= 500
        if name != "std":  # the authors' protocol on the same images, and the indicators of its attacks
            assert {"authors_pgd20", "authors_cw"} <= set(card["accuracy"]), name
            assert ev["counts"]["authors_pgd20"] == ev["n"] and ev["counts"]["authors_cw"] == ev["n"]
            assert {"authors_pgd", "authors_cw", "pgd"} <= set(ev["indicators"]), name
            assert entry["indicators"] == {a: [i["key"] for i in v if i["fired"]] for a, v in ev["indicators"].items()}
        if card["cas"]:
            assert {"pgd20", "joint_pgd20", "soft_mask_pgd20", "adaptive_autoattack"} <= set(card["accuracy"])
            acc = card["accuracy"]
            assert ev["counts"]["adaptive_autoattack"] >= 500
            # the adaptive AutoAttack is the strongest attack on a CAS model: at most one standard error
            # above plain AutoAttack and soft-mask PGD-20, and the worst case covers it
            assert acc["adaptive_autoattack"] <= min(acc["autoattack"], acc["soft_mask_pgd20"]) + \
                ev["stderr"]["adaptive_autoattack"]
            assert acc["worst_case"] <= acc["adaptive_autoattack"]


@pytest.mark.parametrize("name", ZOO + FAMILY)
def test_each_model_loads_by_name_and_matches_its_card(name, test_images):
    x, y = test_images
    model = load_model(name)
    assert not model.training
    n = 300
    measured = accuracy(model, x[:n], y[:n])
    card_clean = INDEX[name]["accuracy"]["clean"]
    se = 100 * math.sqrt(card_clean / 100 * (1 - card_clean / 100) / n)
    print(f"{name}: clean {measured:.1f}% on {n} images, card {card_clean:.1f}% on 1000")
    assert abs(measured - card_clean) <= 3 * se + 1


def test_quality_floors_of_the_cards():
    acc = {name: e["accuracy"] for name, e in INDEX.items()}
    assert acc["std"]["clean"] >= 85
    for name in ZOO[1:]:
        assert acc[name]["clean"] >= 60, name
    assert acc["at"]["pgd20"] >= 37


def test_adaptive_pgd_is_at_least_as_strong_as_plain_pgd_on_at_cas(test_images):
    x, y = test_images
    x, y = x[:200].float() / 255, y[:200]
    model = load_model("at-cas")
    plain = accuracy(model, run_attack("pgd", model, x, y, steps=10), y)
    adaptive = accuracy(model, run_attack("soft_mask_pgd", model, x, y, steps=10), y)
    print(f"at-cas on 200 images, 10 steps: plain PGD {plain:.1f}%, soft-mask PGD {adaptive:.1f}%")
    assert adaptive <= plain


def test_paper_channel_effects_on_the_real_models(test_images):
    x, y = test_images
    stats = {}
    for name in ("std", "at", "at-cas"):
        model = load_model(name)
        stats[role_of(read_model_card(ROOT / "pretrained" / INDEX[name]["file"]))] = channel_statistics(
            model, x[:128], y[:128], "pgd", batch_size=128, name=name)
    effects = paper_effects(stats)
    report = "\n".join(f"  {'HOLDS' if e['holds'] else 'does not hold'}: {e['claim']} ({e['evidence']})"
                       for e in effects)
    print("The paper's channel effects on the bundled std / at / at-cas (128 test images, PGD-20):\n" + report)
    by_claim = {e["claim"]: e["holds"] for e in effects}
    # robust on these models (seen on every subset we tried): adversarial images raise the standard
    # model's channel magnitudes, and CAS activates channels less uniformly than AT under attack
    assert by_claim["Adversarial images raise channel magnitudes (standard model)"]
    assert by_claim["CAS makes adversarial activation less uniform than AT does"]


def test_the_attack_lab_opens_on_at_cas_with_an_attack_that_works(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["lab_model"] == "at-cas"
    result = list(at.session_state["_lab_results"].values())[-1]
    assert result.label_known and result.pred_nat == result.label, "the first image must be classified correctly"
    assert result.success, "the first view's attack must fool the model"
    assert "Nothing to attack" not in json.dumps([str(e.value) for e in at.info])


def test_the_launcher_warms_up_the_first_view_once(monkeypatch, tmp_path):
    """``python -m app.serve`` computes the first view (model, images, first image) while the server
    starts; the first visitor then reuses it instead of computing it again."""
    from app import serve
    from app.common import image_attack, models

    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    calls = []
    real = image_attack.first_view_index
    monkeypatch.setattr(image_attack, "first_view_index", lambda *a, **k: calls.append(1) or real(*a, **k))
    models._first_image.clear()
    serve.warm_up()
    assert calls == [1]  # the warm-up computed it
    index = models.first_image(models.list_available())  # what the first visit asks for
    assert calls == [1]  # and the visit reused it
    x, y = data.load("test")
    assert load_model("at-cas")(x[index:index + 1].float() / 255).argmax(1).item() == y[index]


@pytest.mark.parametrize("name,attack", [("at", "pgd"), ("at-cas", "soft_mask_pgd")])
def test_bf16_attack_gradients_match_fp32_within_noise(name, attack, test_images):
    """Attacks take their gradients under bf16 autocast where the CPU does bf16 natively; the real
    model judges in fp32. On 300 test images the success rate matches the fp32 path within noise
    (a paired test: the images on which the two paths disagree)."""
    x, y = test_images
    x, y = x[:300].float() / 255, y[:300]
    model = load_model(name)
    with torch.no_grad():
        right = {amp: model(run_attack(attack, model, x, y, steps=10, amp=amp)).argmax(1) == y
                 for amp in (True, False)}
    b = int((right[True] & ~right[False]).sum())
    c = int((~right[True] & right[False]).sum())
    acc = {amp: 100 * float(v.float().mean()) for amp, v in right.items()}
    print(f"{name}, {attack}-10 on 300 images: bf16 path {acc[True]:.1f}%, fp32 path {acc[False]:.1f}% "
          f"({b + c} images disagree)")
    assert abs(b - c) <= 3 * math.sqrt(b + c) + 1


def test_evaluations_stop_attacking_fooled_images(test_images):
    """Accuracies drop an image from the attack once the real model is fooled: on ``at`` under PGD-10 the
    verdicts are those of the full schedule, and far fewer images go through the model."""
    x, y = test_images
    x, y = x[:128].float() / 255, y[:128]
    model = load_model("at")
    rows = []
    model.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))  # this test's own copy
    verdict, work = {}, {}
    for until in (False, True):
        rows.clear()
        with torch.no_grad():
            x_adv = run_attack("pgd", model, x, y, steps=10, amp=False, until_fooled=until)
        work[until] = sum(rows)
        verdict[until] = model(x_adv).argmax(1) == y
    print(f"at, PGD-10 on 128 images: {100 * float(verdict[True].float().mean()):.1f}% robust; "
          f"{work[False]} image-forwards with the full schedule, {work[True]} stopping at the first success")
    assert torch.equal(verdict[False], verdict[True])
    assert work[True] < 0.8 * work[False]


@pytest.mark.parametrize("attack", ["pgd", "cw", "soft_mask_pgd"])
def test_until_fooled_changes_no_verdict(attack, test_images):
    """Dropping fooled images changes no image's verdict: per-image budgets, restarts, a target."""
    x, y = test_images
    x, y = x[:32].float() / 255, y[:32]
    model = load_model("at-cas")
    target = torch.full_like(y, 3)
    for kw in ({"eps": torch.linspace(0, 16, 32) / 255}, {"eps": 4 / 255, "restarts": 2},
               {"eps": 8 / 255, "target": 3}):
        verdict = {}
        for until in (False, True):
            s = AttackSettings(steps=5, amp=False, until_fooled=until, **kw)
            x_adv = run_attack(attack, model, x, y, s)
            assert ((x_adv - x).abs().flatten(1).max(1).values <= torch.as_tensor(kw["eps"]) + 1e-6).all()
            with torch.no_grad():
                verdict[until] = margin(model(x_adv), y, target if "target" in kw else None) > 0
        assert torch.equal(verdict[False], verdict[True]), kw
        assert 0 < int(verdict[True].sum()) < 32, kw  # some images fall, some stand: pruning did something


@pytest.mark.parametrize("amp", [True, False])
def test_per_image_seeds_give_the_verdicts_of_one_image_runs(amp, test_images):
    """PGD-20 on a batch of 4 images with one seed each fools the same images as 4 one-image runs with
    those seeds (what lets a server batch one-image requests); the points differ only by rounding."""
    x, y = test_images
    pick = [28, 31, 0, 6]  # two images PGD-20 breaks, one it does not, one misclassified already
    x, y = x[pick].float() / 255, y[pick]
    model = load_model("at-cas")
    seeds = (11, 22, 33, 44)
    together = run_attack("pgd", model, x, y, steps=20, amp=amp, seed=seeds)
    alone = torch.cat([run_attack("pgd", model, x[i:i + 1], y[i:i + 1], steps=20, amp=amp, seed=seed)
                       for i, seed in enumerate(seeds)])
    with torch.no_grad():
        verdicts = [margin(model(v), y) > 0 for v in (together, alone)]
    print(f"at-cas, PGD-20, 4 images, {'bf16' if amp else 'fp32'} path: largest |x_adv difference| "
          f"batch vs one-image runs {float((together - alone).abs().max()):.3g} "
          f"({float((together - alone).abs().max()) * 255:.4f}/255); "
          f"{int(verdicts[0].sum())} of 4 fooled")
    assert torch.equal(verdicts[0], verdicts[1])
    assert 2 <= int(verdicts[0].sum()) <= 3  # the attack did something, and not to every image
