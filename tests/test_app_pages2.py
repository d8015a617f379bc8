"""The Channel statistics and Robustness pages through Streamlit's AppTest, on CPU stand-ins."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
STATS = str(ROOT / "app" / "views" / "channel_stats.py")
ROBUSTNESS = str(ROOT / "app" / "views" / "robustness.py")


@pytest.fixture
def models_dir(standin_pretrained, monkeypatch, tmp_path):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(standin_pretrained))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    return standin_pretrained


def _clean(at):
    assert not at.exception, [e.value for e in at.exception]


def _text(at) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.info, *at.warning, *at.subheader])


@pytest.mark.parametrize("page", [STATS, ROBUSTNESS])
def test_pages_without_models_say_how_to_get_one(page, monkeypatch, tmp_path):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = AppTest.from_file(page, default_timeout=120).run()
    _clean(at)
    assert "No bundled models are installed" in _text(at) and "Train" in _text(at)


def test_channel_statistics_on_a_small_n(models_dir):
    at = AppTest.from_file(STATS, default_timeout=300).run()
    _clean(at)
    assert at.multiselect(key="stats_models").value == ["std", "at", "at-cas"]
    at.number_input(key="stats_n").set_value(16)
    at.slider(key="stats_steps").set_value(2)
    at.button[0].click().run()
    _clean(at)
    table = at.dataframe[0].value
    # std and at: one probe point, before the mask; at-cas: two CAS points, before and after
    assert len(table) == 1 + 1 + 4 and set(table["model"]) == {"std", "at", "at-cas"}
    assert (table["images"] == 16).all()
    assert table[["mean_magnitude_nat", "mean_magnitude_adv", "uniformity_nat"]].notna().all().all()
    assert len(at.get("plotly_chart")) == 2 * (1 + 1 + 4)
    text = _text(at)
    assert "Do the paper's claims hold here?" in text and "CAS makes adversarial activation" in text
    computed = at.session_state["_lab_computations"]
    at.slider(key="stats_thr").set_value(5.0).run()  # a new threshold re-counts, no new attack
    _clean(at)
    assert at.session_state["_lab_computations"] == computed
    assert not at.dataframe[0].value["active_share_nat"].equals(table["active_share_nat"])


def test_robustness_table_fresh_evaluation_and_curve(models_dir):
    at = AppTest.from_file(ROBUSTNESS, default_timeout=600).run()
    _clean(at)
    cards = at.dataframe[0].value
    assert list(cards["model"]) == ["std", "at", "at-cas"] and cards["clean"].notna().all()
    assert "gradient masking" in _text(at) and "Soft-mask PGD" in _text(at)
    at.multiselect(key="rob_models").set_value(["at", "at-cas"])
    at.number_input(key="rob_n").set_value(16)
    at.slider(key="rob_steps").set_value(2)
    at.multiselect(key="rob_attacks").set_value(["fgsm", "pgd", "soft_mask_pgd"])
    at.button[0].click().run()
    _clean(at)
    fresh = at.dataframe[2].value.replace("", float("nan"))  # shown as text, empty where nothing ran
    fresh[fresh.columns[1:]] = fresh[fresh.columns[1:]].astype(float)
    assert list(fresh["model"]) == ["at", "at-cas"]
    at_cas = fresh.set_index("model").loc["at-cas"]
    for col in ("clean", "FGSM", "PGD-2", "soft-mask PGD-2", "worst case"):  # the steps that ran: 2
        assert 0 <= at_cas[col] <= 100 and (at_cas[col] * 16 / 100) % 1 < 1e-6  # a count out of 16
    assert at_cas["worst case"] <= min(at_cas["clean"], at_cas["PGD-2"], at_cas["soft-mask PGD-2"])
    assert fresh.set_index("model").loc["at"].isna()["soft-mask PGD-2"]  # not run on a plain model
    reports = [b.proto.label for b in at.get("download_button")]
    assert reports == ["Report: at (HTML)", "Report: at-cas (HTML)"]
    at.multiselect(key="rob_cmodels").set_value(["at-cas"])
    at.number_input(key="rob_cn").set_value(8)
    at.slider(key="rob_csteps").set_value(1)
    at.multiselect(key="rob_eps_list").set_value([0, 8])
    at.button[1].click().run()
    _clean(at)
    curve = at.get("plotly_chart")[-1]
    import json
    traces = json.loads(curve.proto.spec)["data"]
    assert {t["name"] for t in traces} == {"at-cas — PGD", "at-cas — soft-mask PGD"}
    assert all(t["x"] == [0, 8] and 0 <= min(t["y"]) <= max(t["y"]) <= 100 for t in traces)
