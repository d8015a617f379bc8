"""The app's shared pieces without Streamlit running: the widget text of every attack setting, the
requests of the compute module, the page list and the session-state key convention."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from apptest import assert_clean, page_text
from streamlit.testing.v1 import AppTest

import cas
from app.common import attack_text, compute, image_attack, pages, pickers

ROOT = Path(__file__).resolve().parent.parent


def test_every_attack_setting_has_its_words():
    for name, spec in cas.ATTACKS.items():
        for knob in spec.knobs:
            text = attack_text.text_of(name, knob.key)
            assert text.label, (name, knob.key)
            assert text.increment > 0
    assert attack_text.text_of("fgsm", "step").help == "automatic: ε"  # one step of ε, not PGD's rule
    assert attack_text.text_of("pgd", "step").help == cas.attacks.AUTO_STEP
    assert attack_text.text_of("square", "queries").increment == 50


def test_pickers_take_no_words_from_the_library():
    source = (ROOT / "app" / "common" / "pickers.py").read_text()
    for attribute in ("label", "help", "increment"):
        assert f"k.{attribute}" not in source and f"knob.{attribute}" not in source


def test_requests_are_plain_and_hashable():
    x = np.zeros((3, 32, 32), dtype=np.uint8)
    choice = image_attack.AttackChoice("pgd", eps=8.0, steps=5)
    a = compute.image_request("model@1", x, 3, choice)
    b = compute.image_request("model@1", x.copy(), 3, image_attack.AttackChoice("pgd", eps=8.0, steps=5))
    assert a == b and hash(a) == hash(b)  # the same work, whoever asks for it
    assert a != compute.image_request("model@1", x, 3, choice, crafted_on="other@2")
    assert a != compute.image_request("model@2", x, 3, choice)
    requests = [compute.StatsRequest("m", "all", 16, "pgd", 8.0, 2), compute.EvalRequest("m", 16, 2, 8.0, ("pgd",)),
                compute.CurveRequest("m", 16, 2, (0, 8), "pgd")]
    assert len({*requests, *requests}) == 3


def test_own_choice_falls_back_on_a_model_without_cas():
    class Plain:
        has_cas = False

    choice = image_attack.AttackChoice("soft_mask_pgd", eps=6.0, steps=4)
    own, note = compute.own_choice(choice, Plain())
    assert own.attack == "pgd" and own.get("eps") == 6.0 and "no CAS module" in note
    assert compute.own_choice(image_attack.AttackChoice("pgd"), Plain()) == (image_attack.AttackChoice("pgd"), "")


def test_pages_are_listed_once_and_match_the_views():
    views = {p.name for p in (ROOT / "app" / "views").glob("*.py") if p.name != "__init__.py"}
    assert {p.file for p in pages.PAGES} == views
    assert len(set(pages.PREFIXES)) == len(pages.PAGES)
    assert pages.prefix("attack_lab") == "lab_"
    main = (ROOT / "app" / "main.py").read_text()
    assert not any(f'"{p}"' in main for p in pages.PREFIXES)  # main.py takes them from the list


def test_one_key_convention():
    assert pickers.value_key("lab_", "eps") == "lab_eps"
    assert pickers.button_key("lab_", "random") == "btn_lab_random"
    assert pickers.upload_key("lab_", "image") == "up_lab_image"
    # every key in pickers.py is made by one of the three functions, none written out by hand
    tree = ast.parse((ROOT / "app" / "common" / "pickers.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "key":
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "widget_key":
                value = value.args[0]
            assert isinstance(value, ast.Call) and getattr(value.func, "id", "") in (
                "value_key", "button_key", "upload_key") or isinstance(value, ast.Name), ast.unparse(node)


def test_views_reach_heavy_work_through_compute_only():
    heavy = (".run_attack(", " evaluate(", "accuracy_vs_eps", ".channel_statistics(", "threads(")
    for view in (ROOT / "app" / "views").glob("*.py"):
        source = view.read_text()
        assert not [h for h in heavy if h in source.replace("compute.", "compute:")], view.name
        assert "image_attack.attack_image(" not in source, view.name


@pytest.mark.parametrize("view", ["channel_stats.py", "robustness.py"])
def test_a_page_without_models_says_how_to_get_one(view, monkeypatch, tmp_path):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = AppTest.from_file(str(ROOT / "app" / "views" / view), default_timeout=120).run()
    assert_clean(at)
    assert "No bundled models are installed" in page_text(at) and "Train" in page_text(at)
