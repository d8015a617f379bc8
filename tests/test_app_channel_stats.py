"""The Channel statistics page through Streamlit's AppTest, on CPU stand-ins."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "channel_stats.py")

def _clean(at):
    assert not at.exception, [e.value for e in at.exception]


def _text(at) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.info, *at.warning, *at.subheader])


def test_the_page_without_models_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    _clean(at)
    assert "No bundled models are installed" in _text(at) and "Train" in _text(at)


def test_channel_statistics_on_a_small_n(models_dir):
    at = AppTest.from_file(PAGE, default_timeout=300).run()
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
