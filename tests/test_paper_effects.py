"""The dataset-level channel statistics behind the paper's claims, on the CPU stand-ins.

The stand-ins are tiny, briefly trained models, so the paper's effects are *reported* here (printed,
and written by ``python -m cas.stats --check`` on the bundled models), not assumed. What is asserted
is that the statistics are computed correctly and consistently."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cas import analysis, data, load_checkpoint
from cas.stats import channel_statistics, paper_effects, role_of, summary_rows


def test_statistics_and_effects_on_the_standins(standin_pretrained):
    x, y = data.test_subset(48)
    stats = {}
    for name in ("std", "at", "at-cas"):
        model, card = load_checkpoint(standin_pretrained / f"{name}.safetensors")
        s = channel_statistics(model, x, y, "pgd", batch_size=16, name=name)
        stats[role_of(card)] = s
        for p in s.points:
            assert p.natural_before.shape == p.adversarial_before.shape == (48, model.cas[p.name].channels
                                                                            if p.has_mask else 64)
            assert torch.isfinite(p.adversarial_after).all()
            if p.has_mask:  # after = before x mask, so "after" can be negative, "before" cannot (post-ReLU)
                assert (p.natural_before >= 0).all()
            else:
                assert torch.equal(p.natural_before, p.natural_after)
        assert 0 <= s.adversarial_accuracy <= 100 and s.n == 48
        for row in summary_rows(s):
            assert 0 <= row["uniformity_nat"] <= 1 and 0 <= row["active_share_adv"] <= 1
    assert set(stats) == {"std", "at", "cas"}
    effects = paper_effects(stats)
    assert [e["claim"] for e in effects] == [
        "Adversarial images raise channel magnitudes (standard model)",
        "Adversarial images activate channels more uniformly (standard model)",
        "Adversarial training shrinks the magnitude gap",
        "Adversarial training does not remove the uniformity gap",
        "CAS makes adversarial activation less uniform than AT does"]
    # each verdict agrees with the numbers it quotes
    std_p = stats["std"].points[-1]
    n_sum, a_sum = analysis.summary(std_p.natural_before), analysis.summary(std_p.adversarial_before)
    assert effects[0]["holds"] == (a_sum["mean_magnitude"] > n_sum["mean_magnitude"])
    assert effects[1]["holds"] == (a_sum["uniformity"] > n_sum["uniformity"])
    for e in effects:
        print(f"{'HOLDS' if e['holds'] else 'does not hold'}: {e['claim']} ({e['evidence']})")


def test_uniformity_and_frequency_measures():
    counts = torch.tensor([5, 5, 5, 5])
    assert analysis.uniformity(counts) == 1.0 and analysis.uniformity(torch.tensor([9, 0, 0, 0])) == 0.0
    v = torch.tensor([[10.0, 0.05, 0.2, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # image 0: 0.05 is below 1% of its strongest channel (10), so channel 1 fires on image 1 only
    assert analysis.frequency(v, 0.01).tolist() == [2, 1, 1, 0]
    assert analysis.magnitude(v, 0.01).tolist() == pytest.approx([5.5, 1.05, 0.2, 0.0])


def test_cli_writes_figures_numbers_and_the_check(standin_pretrained, tmp_path):
    res = subprocess.run([sys.executable, "-m", "cas.stats", str(standin_pretrained / "std.safetensors"),
                          str(standin_pretrained / "at-cas.safetensors"), "--n", "16", "--steps", "2",
                          "--class", "airplane", "--check", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| model | point | stage |" in res.stdout and "standard model" in res.stdout
    numbers = json.loads((tmp_path / "channel_summary.json").read_text())
    assert {r["model"] for r in numbers["rows"]} == {"std", "at-cas"} and numbers["effects"]
    assert (tmp_path / "std_layer4_1_before_magnitude.html").exists()
    assert (tmp_path / "at-cas_layer4_1_after_frequency.html").exists()
    assert (tmp_path / "plotly.min.js").exists()  # the figures open offline
