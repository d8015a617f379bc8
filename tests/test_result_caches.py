"""Each page keeps its results in its own store: many Attack Lab results never push out a finished
Robustness evaluation, which would otherwise be re-run, silently, on the next visit."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent

MAIN = str(ROOT / "app" / "main.py")


def _fill_stores(lab_results: int) -> None:
    """A tiny app: one evaluation-like result, then ``lab_results`` Attack Lab results."""
    import streamlit as st

    from app.common import compute

    compute.cached(("eval", "model"), lambda: "evaluation", store="robustness")
    compute.cached(("stats", "model"), lambda: "statistics", store="stats")
    for i in range(lab_results):
        compute.cached(("attack", i), lambda i=i: f"attack {i}")
    st.session_state["again"] = compute.cached(("eval", "model"), lambda: "re-run", store="robustness")


def test_each_store_has_its_own_budget():
    from app.common import compute

    n = compute.STORES["lab"] + 30
    at = AppTest.from_function(_fill_stores, args=(n,), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["again"] == "evaluation"
    assert len(at.session_state["_lab_results"]) == compute.STORES["lab"]  # the oldest attacks went
    assert ("attack", n - 1) in at.session_state["_lab_results"]
    assert list(at.session_state["_stats_results"].values()) == ["statistics"]
    assert list(at.session_state["_robustness_results"].values()) == ["evaluation"]
    assert at.session_state["_lab_computations"] == n + 2


def test_an_evaluation_survives_many_attack_lab_results(models_dir):
    at = AppTest.from_file(MAIN, default_timeout=300)
    at.query_params["attack"] = "none"
    at.run()
    at.switch_page("views/robustness.py").run()
    at.multiselect(key="rob_models").set_value(["at-cas"])
    at.number_input(key="rob_n").set_value(8)
    at.slider(key="rob_steps").set_value(1)
    at.multiselect(key="rob_attacks").set_value(["fgsm"])
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    evaluated = at.dataframe[2].value
    computed = at.session_state["_lab_computations"]

    at.switch_page("views/attack_lab.py").run()
    for i in range(1, 33):  # 32 Attack Lab results, each a new image
        at.number_input(key="lab_idx").set_value(i).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["_lab_computations"] >= computed + 32

    computed = at.session_state["_lab_computations"]
    at.switch_page("views/robustness.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["_lab_computations"] == computed  # shown again, not re-run
    assert at.dataframe[2].value.equals(evaluated)


def test_the_pages_channel_summary_is_the_librarys():
    """The Attack Lab's per-image summary (numpy, for the server's speed) gives cas.analysis's figures."""
    import numpy as np
    import torch

    from app.common.image_attack import _module_summary
    from cas import analysis

    rng = np.random.default_rng(0)
    for threshold in (0.01, 0.1):
        for _ in range(10):
            v = (rng.random(128) * (rng.random(128) > 0.5)).astype(np.float32) - 0.05
            t = torch.from_numpy(v).reshape(1, -1)
            lib = analysis.summary(t, threshold)
            got = _module_summary(v, threshold)
            assert got["active"] == int(analysis.activated(t, threshold).sum())
            assert np.allclose([got["total"], got["share"], got["uniformity"]],
                               [lib["total_magnitude"], lib["active_share"], analysis.uniformity(t.abs()[0])], atol=1e-5)
