"""The Robustness page: its tables as data (no Streamlit), and the page through Streamlit's AppTest on
CPU stand-ins."""
from __future__ import annotations

import json
from pathlib import Path

from apptest import assert_clean, page_text
from streamlit.testing.v1 import AppTest

from app.views import robustness

PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "robustness.py")

CARDS = [
    {"name": "plain", "card": {"cas": False, "method": "at", "accuracy": {"clean": 80.0, "pgd20": 45.5}}},
    {"name": "masked", "card": {"cas": True, "method": "at", "accuracy": {"clean": 82.0, "soft_mask_pgd20": 30.0},
                                "evaluation": {"n": 500, "autoattack": "APGD-CE + APGD-T (fast)",
                                               "counts": {"autoattack": 100}, "stderr": {"clean": 1.7}}}},
    {"name": "fresh", "card": {"cas": False, "method": "std", "heldout": {"heldout_clean": 70.0}}},
]


def test_card_table_keeps_measured_columns_only():
    table = robustness.card_table(CARDS)
    assert list(table["model"]) == ["plain", "masked", "fresh"]
    assert list(table["defence"]) == ["none", "CAS", "none"]
    measured = list(table.columns[3:])
    assert measured == [robustness.COLUMNS[k] for k in robustness.COLUMNS if k in ("clean", "pgd20", "soft_mask_pgd20")]
    assert table.set_index("model").loc["fresh", "clean"] == 70.0  # a fresh run: its held-out accuracy
    assert robustness.shown(table, 3).set_index("model").loc["plain", robustness.COLUMNS["soft_mask_pgd20"]] == ""


def test_card_notes_and_literature_table():
    notes = robustness.card_notes(CARDS)
    assert notes["errors"] == [1.7]
    assert notes["notes"] == ["500 test images (AutoAttack: 100); AutoAttack column: APGD-CE + APGD-T (fast)"]
    literature = robustness.literature_table()
    assert list(literature.columns[:2]) == ["model", "method"]
    assert literature.set_index("model").loc["TRADES+CAS", "method"] == "Zhang et al., ICML 2019 + Bai et al., ICLR 2021"


def test_card_indicators_table_and_card_line():
    from app.common import models

    inds = [{"key": "silent_success", "name": "Silent success", "fired": True, "value": 8.5,
             "unit": "% of images", "images": 200, "sentence": "Points were visited but not returned."},
            {"key": "transfer", "name": "Transfer failure", "fired": None, "value": None, "unit": "",
             "images": 0, "sentence": ""}]
    cards = [*CARDS, {"name": "checked", "card": {"cas": True, "evaluation": {"indicators": {"authors_pgd": inds}}}}]
    found = robustness.card_indicators(cards)
    assert list(found) == ["checked"] and list(found["checked"]) == ["authors_pgd"]
    table = robustness.indicator_table(found["checked"]["authors_pgd"])
    assert list(table.columns) == ["indicator", "fired", "measured value", "images", "what it means"]
    assert list(table["fired"]) == ["yes", ""] and list(table["measured value"]) == ["8.5 % of images", ""]
    line = models.card_line({"method": "at", "cas": True, "arch": "resnet18",
                             "accuracy": {"clean": 70.0, "joint_pgd20": 30.8, "adaptive_autoattack": 32.0,
                                          "worst_case": 31.8, "authors_pgd20": 44.3}})
    assert "joint PGD-20 31%" in line and "adaptive AutoAttack 32%" in line and "worst case 32%" in line
    assert "authors' PGD-20 44%" in line and "joint_pgd20" not in line and "worst_case" not in line


def test_the_authors_protocol_keeps_its_name_whatever_the_steps():
    assert robustness.column_name("authors_pgd20", 10) == "authors' PGD-20"
    assert robustness.column_name("pgd20", 10) == "PGD-10"


def test_evaluation_table_and_ladder_name_the_steps_that_ran():
    class Result:
        def __init__(self, accuracy):
            self.accuracy = accuracy

    results = {"at": Result({"clean": 80.0, "pgd20": 40.0}),
               "at-cas": Result({"clean": 82.0, "pgd20": 60.0, "soft_mask_pgd20": 30.0})}
    table = robustness.evaluation_table(results, 5)
    assert list(table.columns) == ["model", "clean", "PGD-5", robustness.column_name("soft_mask_pgd20", 5)]
    columns, accuracies = robustness.ladder(results, 5)
    assert columns == ["clean", "PGD-5", robustness.column_name("soft_mask_pgd20", 5)]
    assert accuracies == {"at-cas": [82.0, 60.0, 30.0]}  # CAS models only
    assert robustness.ladder({"at": results["at"]}, 5) == ([], {})

def test_robustness_table_fresh_evaluation_and_curve(models_dir):
    at = AppTest.from_file(PAGE, default_timeout=600).run()
    assert_clean(at)
    cards = at.dataframe[0].value
    assert list(cards["model"]) == ["std", "at", "at-cas"] and cards["clean"].notna().all()
    assert "gradient masking" in page_text(at) and "Soft-mask PGD" in page_text(at)
    at.multiselect(key="rob_models").set_value(["at", "at-cas"])
    at.number_input(key="rob_n").set_value(16)
    at.slider(key="rob_steps").set_value(2)
    at.multiselect(key="rob_attacks").set_value(["fgsm", "pgd", "soft_mask_pgd"])
    at.button[0].click().run()
    assert_clean(at)
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
    assert_clean(at)
    curve = at.get("plotly_chart")[-1]
    traces = json.loads(curve.proto.spec)["data"]
    assert {t["name"] for t in traces} == {"at-cas — PGD", "at-cas — soft-mask PGD"}
    assert all(t["x"] == [0, 8] and 0 <= min(t["y"]) <= max(t["y"]) <= 100 for t in traces)
