"""Channel statistics with their noise: bootstrap standard errors and three-way claim verdicts."""
from __future__ import annotations

import torch

from cas.stats import ModelStats, PointStats, paper_effects, summary_rows


def _stats(name: str, nat: torch.Tensor, adv: torch.Tensor) -> ModelStats:
    return ModelStats(name, "pgd", nat.shape[0], 90.0, 10.0, [PointStats("layer4_1", nat, adv, nat, adv, False)])


def test_standard_errors_and_verdicts():
    gen = torch.Generator().manual_seed(0)
    nat = torch.rand(200, 32, generator=gen)
    std = _stats("std", nat, 2 * nat)  # every magnitude doubled: a clear effect
    row = summary_rows(std)[0]
    assert 0 < row["mean_magnitude_nat_se"] < 0.05 and row["mean_magnitude_adv_se"] > row["mean_magnitude_nat_se"]
    same = _stats("at", nat, nat.clone())  # no change at all
    effects = {e["claim"]: e for e in paper_effects({"std": std, "at": same})}
    grows = effects["Adversarial images raise channel magnitudes (standard model)"]
    assert grows["verdict"] == "holds" and grows["interval"][0] > 0 and grows["holds"]
    unchanged = effects["Adversarial training does not remove the uniformity gap"]
    assert unchanged["verdict"] == "within noise" and unchanged["interval"][0] <= 0 <= unchanged["interval"][1]
    assert "95% interval" in grows["evidence"]


def test_noise_shrinks_with_more_images():
    gen = torch.Generator().manual_seed(1)
    small, large = torch.rand(20, 16, generator=gen), torch.rand(500, 16, generator=gen)
    se_small = summary_rows(_stats("a", small, small))[0]["mean_magnitude_nat_se"]
    se_large = summary_rows(_stats("b", large, large))[0]["mean_magnitude_nat_se"]
    assert se_large < se_small / 2
