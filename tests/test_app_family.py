"""Every page with CAS's relatives (CIFS, EWAS, FSR), driven through Streamlit's AppTest on the bundled
models ``at-cifs``, ``at-ewas`` and ``at-fsr`` (and ``at``, ``at-cas`` beside them): the pickers and
cards name each model's own defence, the mask-adaptive attacks run on all of them, the Attack Lab shows
an element-wise mask position by position, a CAS model's last module comes first and uniformity is
defined where it is shown. Attacks run one or two steps, so that each test takes a few seconds."""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from apptest import assert_clean, page_text
from streamlit.testing.v1 import AppTest

import cas
from cas.family import DEFENSES

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "pretrained"
MAIN = str(ROOT / "app" / "main.py")
VIEWS = ROOT / "app" / "views"
TIMEOUT = 180
FAMILY = {"at-cifs": "cifs", "at-ewas": "ewas", "at-fsr": "fsr"}  # bundled name -> defence


@pytest.fixture
def bundled(monkeypatch, tmp_path, cifar_test):
    """The app on the bundled models (the family's included: skipped where one is not installed)."""
    missing = [n for n in ["at", "at-cas", *FAMILY] if not (BUNDLED / f"{n}.safetensors").exists()]
    if missing:
        pytest.skip(f"bundled models not installed: {', '.join(missing)}")
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(BUNDLED))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    return BUNDLED


def lab(**query) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at.run()


def page(view: str, **query) -> AppTest:
    at = AppTest.from_file(str(VIEWS / view), default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at.run()


def last_result(at: AppTest):
    return list(at.session_state["_lab_results"].values())[-1]


def chart(at: AppTest, key: str) -> dict:
    """The Plotly figure (JSON) the page drew under ``key``."""
    found = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert len(found) == 1, [c.proto.id for c in at.get("plotly_chart")]
    return json.loads(found[0].proto.spec)


def values(z) -> np.ndarray:
    """A figure's array, plain or in Plotly's typed-array form."""
    if isinstance(z, dict):
        shape = tuple(int(s) for s in str(z["shape"]).split(","))
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    return np.asarray(z, dtype=float)


def titles(fig: dict) -> list[str]:
    return [a["text"] for a in fig["layout"].get("annotations", [])]


# -- models without an index entry ---------------------------------------------------------------------

def test_a_bundled_checkpoint_without_an_index_entry_is_listed(bundled, monkeypatch, tmp_path):
    from app.common import models

    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copy(BUNDLED / "at.safetensors", folder / "at.safetensors")
    shutil.copy(BUNDLED / "at-ewas.safetensors", folder / "at-ewas.safetensors")
    (folder / "index.json").write_text(json.dumps({"models": [{"name": "at", "file": "at.safetensors",
                                                               "description": "listed"}]}))
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(folder))
    listed = models.list_available()
    assert [m["name"] for m in listed] == ["at", "at-ewas"]
    extra = listed[1]
    assert extra["source"] == "bundled" and "EWAS" in extra["description"]  # from its card
    assert models.defense_label(extra["card"]) == "EWAS" and models.defense_label(listed[0]["card"]) is None


# -- Attack Lab ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILY))
def test_attack_lab_names_each_models_own_defence(bundled, name):
    defense = DEFENSES[FAMILY[name]]
    at = lab(model=name, steps=1)
    assert_clean(at)
    text = page_text(at)
    assert f"with {defense.label}" in text  # the sidebar's card line
    assert f"{defense.label} mask" in text and "picks its CAS mask" not in text  # the honest-evaluation note
    r = last_result(at)
    model = cas.load_checkpoint(BUNDLED / f"{name}.safetensors")[0]
    assert [m.name for m in r.modules] == model.cas_points
    assert all(m.defense == defense.name and m.is_cas for m in r.modules)
    shown = r.modules[-1]
    assert f"Shown: the {defense.label} module at **{shown.name}**" in text
    channel = chart(at, f"lab_module_{shown.name}")
    assert titles(channel)[0] == f"Before the {defense.label} mask"
    assert ("spatial mean" in titles(channel)[1]) == defense.element_wise
    # the mask-adaptive attacks are offered and speak of the mask, not of CAS alone
    menu = at.selectbox(key="lab_attack")
    assert "Soft-mask PGD (mask-adaptive)" in menu.options and "Joint PGD (mask-adaptive)" in menu.options
    assert not [o for o in menu.options if "CAS" in o] and "CAS-adaptive" not in (menu.help or "")


@pytest.mark.parametrize("name", list(FAMILY))
def test_mask_adaptive_attacks_run_on_each_relative(bundled, name):
    at = lab(model=name, steps=1, attack="soft_mask_pgd")
    assert_clean(at)
    assert "needs a model with" not in page_text(at)
    assert last_result(at).choice.attack == "soft_mask_pgd" and last_result(at).linf255 > 0
    at.selectbox(key="lab_attack").set_value("joint_pgd").run()
    assert_clean(at)
    assert last_result(at).choice.attack == "joint_pgd"


@pytest.mark.parametrize("name", [n for n, d in FAMILY.items() if DEFENSES[d].element_wise])
def test_element_wise_mask_is_shown_position_by_position(bundled, name):
    from app.common import image_attack

    label = DEFENSES[FAMILY[name]].label
    at = lab(model=name, steps=2)
    assert_clean(at)
    view = last_result(at).modules[-1]
    assert view.element_wise and view.spatial_before.shape == view.spatial_mask.shape
    k, h, w = view.spatial_mask.shape[1:]
    assert (h, w) == (4, 4) and k == view.before.shape[1]
    # the bars are the spatial means of the maps the heatmaps show, and the page says so
    assert np.allclose(view.spatial_before.mean(axis=(2, 3)), view.before, atol=1e-5)
    assert np.allclose(view.spatial_mask.mean(axis=(2, 3)), view.mask, atol=1e-5)
    assert "spatial mean" in page_text(at)
    # by default the channel the attack changed most: clean and adversarial map, clean and adversarial mask
    key = f"lab_module_{view.name}_channel"
    default = image_attack.most_changed_channel(view)
    change = np.abs(view.spatial_before[1] - view.spatial_before[0]).sum(axis=(1, 2))
    assert change[default] == change.max()
    fig = chart(at, f"{key}_fig")
    assert [d["type"] for d in fig["data"]] == ["heatmap"] * 4
    assert titles(fig) == ["Feature map, clean image", "Feature map, adversarial image",
                           f"{label} mask, clean image", f"{label} mask, adversarial image"]
    maps = [values(d["z"]) for d in fig["data"]]
    assert all(m.shape == (4, 4) for m in maps)
    expected = [view.spatial_before[0, default], view.spatial_before[1, default],
                view.spatial_mask[0, default], view.spatial_mask[1, default]]
    assert all(np.allclose(m, e, atol=1e-6) for m, e in zip(maps, expected))
    assert f"channel {default} (changed most by the attack)" in at.selectbox(key=key).options[0]
    # another channel: its maps, without a new attack
    computed = at.session_state["_lab_computations"]
    other = (default + 1) % k
    at.selectbox(key=key).set_value(other).run()
    assert_clean(at)
    assert at.session_state["_lab_computations"] == computed
    fig = chart(at, f"{key}_fig")
    assert np.allclose(values(fig["data"][0]["z"]), view.spatial_before[0, other], atol=1e-6)
    assert np.allclose(values(fig["data"][2]["z"]), view.spatial_mask[0, other], atol=1e-6)
    assert f"Channel {other} at block" in page_text(at)


@pytest.mark.parametrize("name", ["at-cas", "at-cifs"])
def test_per_channel_masks_have_no_spatial_view(bundled, name):
    at = lab(model=name, steps=1)
    assert_clean(at)
    assert all(m.spatial_mask is None and not m.element_wise for m in last_result(at).modules)
    assert not [s for s in at.selectbox if s.key.endswith("_channel")]
    assert "position by position" not in page_text(at)


def test_a_cas_model_shows_its_last_module_and_opens_the_other(bundled):
    at = lab(model="at-cas", steps=1)
    assert_clean(at)
    assert [m.name for m in last_result(at).modules] == ["layer4_0", "layer4_1"]
    picker = at.radio(key="lab_module")
    assert picker.value == "layer4_1"
    text = page_text(at)
    assert "Shown: the CAS module at **layer4_1**, the last of this model's 2" in text
    chart(at, "lab_module_layer4_1")
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-lab_module_layer4_0")]
    computed = at.session_state["_lab_computations"]
    picker.set_value("layer4_0").run()
    assert_clean(at)
    assert at.session_state["_lab_computations"] == computed  # the same result, another module
    assert "Shown: the CAS module at **layer4_0**" in page_text(at)
    assert titles(chart(at, "lab_module_layer4_0"))[0] == "Before the CAS mask"
    # a model with one module: no choice, the line says so
    at.selectbox(key="lab_model").set_value("at-fsr").run()
    assert_clean(at)
    assert not [r for r in at.radio if r.key == "lab_module"]
    assert "Shown: the FSR module at **layer4_1**, this model's only one." in page_text(at)


def test_uniformity_is_defined_where_it_is_shown(bundled):
    at = lab(model="at-cas", steps=1)
    assert_clean(at)
    assert any(m.label.startswith("Uniformity") for m in at.metric)
    visible = "\n".join(str(c.value) for c in at.caption)  # written out, not only in a tooltip
    assert "Uniformity**: how evenly |activation| is spread over the channels (1 = all equal" in visible


# -- Compare, Channel statistics, Robustness -----------------------------------------------------------

def test_compare_puts_the_family_side_by_side(bundled):
    names = ["at-cas", *FAMILY]
    at = lab(attack="none")
    at.switch_page("views/compare.py")
    for k, v in {"models": ",".join(names), "attack": "soft_mask_pgd", "steps": 1}.items():
        at.query_params[k] = str(v)
    at.run()
    assert_clean(at)
    results = [r for r in at.session_state["_lab_results"].values() if r.attacked]
    assert len(results) == 4 and all(r.choice.attack == "soft_mask_pgd" for r in results)  # no fallback
    assert len(at.get("plotly_chart")) == 2 * len(names)
    text = page_text(at)
    assert "plain PGD" not in text
    for name, defense in {"at-cas": "cas", **FAMILY}.items():
        label = DEFENSES[defense].label
        assert f"with {label}" in text and f"**{label}**:" in text  # its card line and what its mask does
        shown = next(r for r in results if r.modules[-1].defense == defense).modules[-1]
        assert titles(chart(at, f"cmp_ch_{name}"))[0] == "Before the mask"
        assert shown.name in text  # the last module of each model is the one drawn


def test_channel_statistics_on_the_family(bundled):
    at = page("channel_stats.py", models="at,at-cas," + ",".join(FAMILY), n=8, steps=1)
    at.button[0].click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(table["model"]) == {"at", "at-cas", *FAMILY}
    assert len(table[table["model"] == "at-ewas"]) == 2 and len(table[table["model"] == "at-fsr"]) == 2
    tabs = [t.label for t in at.tabs]
    for label in ["CAS module layer4_1", "CIFS module layer4_0", "CIFS module layer4_1", "EWAS module layer4_0",
                  "FSR module layer4_1"]:
        assert label in tabs, tabs
    text = page_text(at)
    assert "CAS makes adversarial activation" in text  # checked on at-cas, the only CAS model
    assert "at-cifs (CIFS), at-ewas (EWAS) and at-fsr (FSR)" in text and "no part in them" in text


def test_paper_claims_leave_the_relatives_out(bundled, monkeypatch):
    from app.common import compute, models
    from cas import stats as cas_stats

    cards = {m["name"]: models.card_of(m["card"]) for m in models.list_available()}
    roles = {}
    monkeypatch.setattr(cas_stats, "paper_effects", lambda by_role, threshold: roles.update(by_role) or [])
    compute.paper_claims({"at": "at's", "at-cifs": "cifs'", "at-ewas": "ewas'", "at-cas": "cas'"}, cards, 0.01)
    assert roles == {"at": "at's", "cas": "cas'"}  # the CAS role is CAS's, never a relative's


def test_robustness_names_each_defence_and_runs_the_adaptive_attacks(bundled):
    at = page("robustness.py")
    assert_clean(at)
    cards = at.dataframe[0].value.set_index("model")
    assert [cards.loc[n, "defence"] for n in ["at", "at-cas", *FAMILY]] == ["none", "CAS", "CIFS", "EWAS", "FSR"]
    at.multiselect(key="rob_models").set_value(list(FAMILY))
    at.number_input(key="rob_n").set_value(8)
    at.slider(key="rob_steps").set_value(1)
    at.multiselect(key="rob_attacks").set_value(["pgd", "soft_mask_pgd"])
    at.button[0].click().run()
    assert_clean(at)
    fresh = at.dataframe[-1].value.set_index("model")
    assert list(fresh.index) == list(FAMILY)
    assert fresh["soft-mask PGD-1"].notna().all()  # the adaptive attack ran on every relative
    assert "Attack by attack on the models with a mask defence" in page_text(at)
    assert "CAS-adaptive" not in page_text(at)


def test_the_adaptive_attacks_words_speak_of_the_mask():
    from app.common import attack_text, image_attack

    adaptive = [n for n, s in cas.ATTACKS.items() if s.needs_cas]
    assert len(adaptive) == 3
    for name in adaptive:
        label, help_text = cas.ATTACKS[name].label, cas.ATTACKS[name].description
        assert "mask" in label and "CAS" not in label and image_attack.attack_label(name) == label
        assert attack_text.attack_help(name) == help_text and "CAS-adaptive" not in help_text


def test_the_train_page_trains_a_relative():
    from app.views import train

    s = {**train.SMALL, "defense": "ewas"}
    assert train.config_of(s).defense == "ewas" and train.config_of(s).validate().loss_config.aux_weight == 0.01
    assert train.config_of({**s, "arch": "vgg16"}).defense == "cas"  # relatives are ResNet-18 only
    assert train.config_of({**s, "cas": False}).model_kwargs() == {"cas": False, "width": s["width"]}


def test_robustness_says_whether_a_relative_beats_plain_at():
    from app.common import models
    from app.views import robustness

    available = models.list_available()
    rows = {r["model"]: r for r in robustness.family_rows(available)}
    cards = {m["name"]: models.card_of(m["card"]) for m in available}
    assert {"at-cas"} <= set(rows), rows
    for name, row in rows.items():
        card = cards[name]
        assert row["strongest attack (worst case)"] == card.accuracy["worst_case"]
        gap = card.accuracy["worst_case"] - cards["at"].accuracy["worst_case"]
        assert row["against at"].endswith(f"at ({gap:+.1f})")
        assert row["their attack"]  # every defence's own authors' evaluation is on its card
