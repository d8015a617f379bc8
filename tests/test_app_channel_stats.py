"""The Channel statistics page through Streamlit's AppTest, on CPU stand-ins."""
from __future__ import annotations

from pathlib import Path

from apptest import assert_clean, page_text
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "channel_stats.py")

def test_channel_statistics_on_a_small_n(models_dir):
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    assert_clean(at)
    assert at.multiselect(key="stats_models").value == ["std", "at", "at-cas"]
    at.number_input(key="stats_n").set_value(16)
    at.slider(key="stats_steps").set_value(2)
    at.button[0].click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    # std and at: one probe point, before the mask; at-cas: two CAS points, before and after
    assert len(table) == 1 + 1 + 4 and set(table["model"]) == {"std", "at", "at-cas"}
    assert (table["images"] == 16).all()
    assert table[["mean_magnitude_nat", "mean_magnitude_adv", "uniformity_nat"]].notna().all().all()
    assert len(at.get("plotly_chart")) == 2 * (1 + 1 + 4)
    text = page_text(at)
    assert "Do the paper's claims hold here?" in text and "CAS makes adversarial activation" in text
    computed = at.session_state["_lab_computations"]
    at.slider(key="stats_thr").set_value(5.0).run()  # a new threshold re-counts, no new attack
    assert_clean(at)
    assert at.session_state["_lab_computations"] == computed
    assert not at.dataframe[0].value["active_share_nat"].equals(table["active_share_nat"])
