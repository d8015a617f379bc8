"""Training losses: finite, differentiable, CAS term in one place; training-time examples."""
import pytest
import torch

from cas import create_model
from cas.losses import METHODS, LossConfig, head_loss, perturb, training_loss


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_cas", [True, False])
def test_each_loss_is_finite_and_differentiable(method, with_cas):
    torch.manual_seed(0)
    model = create_model("resnet18", width=4, cas=with_cas)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    cfg = LossConfig(method=method, steps=2)
    model.eval()
    x_adv = perturb(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    if method == "std":
        assert x_adv is x
    model.train()
    loss, logits = training_loss(model, x, y, x_adv, cfg)
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (6, 10)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if with_cas:
        assert all(m.head.weight.grad.abs().sum() > 0 for m in model.cas.values())


def test_cas_term_is_the_mean_auxiliary_loss_weighted_by_aux_weight():
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    cfg0, cfg2 = LossConfig("at", aux_weight=0.0), LossConfig("at", aux_weight=2.0)
    l0, _ = training_loss(model, x, y, x, cfg0)
    l2, _ = training_loss(model, x, y, x, cfg2)
    logits, aux = model.forward_aux(x, y)
    aux_mean = torch.stack([torch.nn.functional.cross_entropy(a, y) for a in aux]).mean()
    assert torch.allclose(l2 - l0, 2 * aux_mean, atol=1e-5)


def test_head_losses_match_their_definitions():
    torch.manual_seed(0)
    nat, adv = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(head_loss("at", adv, nat, y, 0), ce(adv, y))
    assert torch.allclose(head_loss("std", None, nat, y, 0), ce(nat, y))
    kl = torch.nn.functional.kl_div(adv.log_softmax(1), nat.softmax(1), reduction="batchmean")
    assert torch.allclose(head_loss("trades", adv, nat, y, 6.0), ce(nat, y) + 6 * kl, atol=1e-6)
    # TRADES with identical natural and adversarial outputs reduces to CE
    assert torch.allclose(head_loss("trades", nat, nat, y, 6.0), ce(nat, y), atol=1e-6)
    assert torch.isfinite(head_loss("mart", adv, nat, y, 6.0))
    with pytest.raises(ValueError):
        LossConfig("fast")


def test_training_examples_increase_the_loss():
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    cfg = LossConfig("at", steps=5)
    x_adv = perturb(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
    ce = torch.nn.functional.cross_entropy
    assert ce(model(x_adv), y) > ce(model(x), y)
