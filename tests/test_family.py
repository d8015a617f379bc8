"""The channel-defence family (cas.family): CIFS, EWAS and FSR with CAS's contract."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from cas.attacks import ATTACKS, run_attack
from cas.family import DEFENSES, CIFSModule
from cas.losses import LossConfig, runner_up, training_loss
from cas.models import create_model

FAMILY = ("cifs", "ewas", "fsr")


def _model(defense: str, seed: int = 0):
    torch.manual_seed(seed)
    m = create_model("resnet18", width=8, defense=defense)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval differs from train
        m.train()
        m(torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    return m.eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=g), torch.tensor([3, 1, 4, 1])


@pytest.mark.parametrize("defense", FAMILY)
def test_every_forward_agrees_and_leaves_the_model_as_it_was(defense, batch):
    x, y = batch
    m = _model(defense)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attrs = {name: dict(vars(mod)) for name, mod in m.named_modules()}
    logits = m(x)
    res = m.forward_details(x, y)
    aux = m.forward_aux(x)[1]
    assert torch.allclose(logits, res.logits) and all(torch.allclose(a, b) for a, b in zip(aux, res.aux_logits))
    assert [d.name for d in res.details] == list(DEFENSES[defense].points) == m.cas_points
    for d in res.details:
        assert d.mask.shape == d.before.shape == d.after.shape
        assert (d.spatial_mask is not None) == DEFENSES[defense].element_wise
    with torch.no_grad():
        assert torch.allclose(m(x), logits, atol=1e-5)
    with torch.inference_mode():
        assert torch.allclose(m(x), logits, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert {name: dict(vars(mod)) for name, mod in m.named_modules()}.keys() == attrs.keys()
    assert not m.training and all(vars(mod).keys() == attrs[name].keys() for name, mod in m.named_modules())


def _their_cifs_mask(module: CIFSModule, feat, y=None, training=False):
    """The mask as the CIFS authors compute it: the gradient of the top-2 probe logits with respect to a
    detached copy of the whole feature map, its spatial mean times H x W, softmax over channels."""
    feat = feat.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = module.probe(feat.mean(dim=(2, 3)))
        top = logits.topk(2, dim=1).indices
        first = y if training else top[:, 0]
        total = logits.gather(1, first[:, None]).sum() + logits.gather(1, top[:, 1:2]).sum()
        (g,) = torch.autograd.grad(total, feat, create_graph=True)
    g = F.adaptive_avg_pool2d(g, 1).flatten(1) * feat.shape[2] * feat.shape[3]
    return torch.softmax(g, dim=1)


@pytest.mark.parametrize("probe", ["mlp", "linear"])
def test_cifs_mask_is_the_gradient_its_authors_take(probe):
    torch.manual_seed(0)
    module = CIFSModule(32, 10, probe).eval()
    f = torch.relu(torch.randn(5, 32, 4, 4))
    y = torch.tensor([0, 2, 4, 6, 8])
    assert torch.allclose(module(f).mask, _their_cifs_mask(module, f), atol=1e-6)
    assert torch.allclose(module(f, y, mask="label").mask, _their_cifs_mask(module, f, y, training=True), atol=1e-6)
    module.train()  # training with labels: the label's logit and the probe's second
    assert torch.allclose(module(f, y).mask, _their_cifs_mask(module, f, y, training=True), atol=1e-6)


@pytest.mark.parametrize("defense", FAMILY)
def test_soft_mask_at_a_low_temperature_is_the_real_one(defense, batch):
    x, y = batch
    m = _model(defense)
    real = m.forward_details(x)
    soft = m.forward_details(x, mask="soft", temperature=1e-4 if defense != "fsr" else 0.1)
    assert torch.allclose(real.logits, soft.logits, atol=1e-4)
    assert all(torch.allclose(a.mask, b.mask, atol=1e-5) for a, b in zip(real.details, soft.details))


def test_the_paper_rule_hides_the_mask_from_the_gradient_and_soft_shows_it(batch):
    """CIFS computes its mask on detached features: plain input gradients treat it as fixed. The soft
    rule lets the gradient through the probe (double backpropagation through the mask)."""
    x, y = batch
    m = _model("cifs")

    def mask_grad(mask):  # how the first module's mask moves with the input
        xa = x.clone().requires_grad_(True)
        d = m.forward_details(xa, mask=mask, temperature=0.5).details[0]
        (g,) = torch.autograd.grad((d.mask * torch.arange(d.mask.shape[1])).sum(), xa, allow_unused=True)
        return g

    assert mask_grad("pred") is None  # no path from the input to the paper's mask
    assert mask_grad("soft").abs().sum() > 0
    # a second-order gradient through the mask (what training the probe through the mask needs)
    m.train()
    logits = m(x, y)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y), m.cas["layer4_0"].hidden.weight, create_graph=True)
    assert g.abs().sum() > 0


def test_fsr_is_noisy_in_training_only(batch):
    x, _ = batch
    m = _model("fsr")
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()


def test_ewas_masks_with_a_weight_row_element_wise(batch):
    x, y = batch
    m = _model("ewas")
    d = m.forward_details(x, y, mask="label").details[0]
    head = m.cas["layer4_0"].head
    assert torch.allclose(d.spatial_mask, head.weight[y].view(4, 64, 4, 4))
    assert torch.allclose(d.mask, d.spatial_mask.mean(dim=(2, 3)))


def test_fsr_trains_its_non_robust_part_toward_the_runner_up(batch):
    x, y = batch
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    assert runner_up(logits, torch.tensor([1, 2])).tolist() == [2, 0]
    m = _model("fsr").train()
    torch.manual_seed(5)
    cfg = LossConfig("at", aux_weight=1.0, eps=8 / 255, recipe="fgsm_rs")
    loss, _ = training_loss(m, x, y, x, cfg)
    torch.manual_seed(5)
    logits, aux, extras = m(x, y, return_aux=True, return_extras=True)
    e = extras[0]
    expected = (F.cross_entropy(logits, y) + F.cross_entropy(aux[0], y)
                + F.cross_entropy(e["nonrobust"], runner_up(logits, y)) + F.cross_entropy(e["recalibrated"], y))
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("defense", FAMILY)
def test_a_shared_model_serves_threads_with_different_rules(defense, batch):
    x, y = batch
    m = _model(defense)
    want = {mode: m.forward_details(x, y, mask=mode).logits for mode in ("pred", "label", "soft")}
    errors = []

    def work(mode):
        for _ in range(5):
            if not torch.allclose(m.forward_details(x, y, mask=mode).logits, want[mode], atol=1e-5):
                errors.append(mode)

    threads = [threading.Thread(target=work, args=(mode,)) for mode in want for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _their_ewas_pgd(model, x, y, seed, steps=20, eps=0.031, lam=0.01, cw=False):
    """EWAS's own PGD / CW as white_box_robust_eval.py runs it (start drawn like our per-image seeds)."""
    start = torch.cat([torch.empty_like(x[i:i + 1]).uniform_(-eps, eps, generator=torch.Generator().manual_seed(s))
                       for i, s in enumerate(seed)])
    xa = (x + start).clamp(0, 1)

    def loss_fn(z):
        if not cw:
            return F.cross_entropy(z, y)
        own = z.gather(1, y[:, None]).squeeze(1)
        other = z.masked_fill(F.one_hot(y, 10).bool(), -1e4).max(1).values
        return -torch.clamp(own - other + 50, min=0).sum()

    for _ in range(steps):
        xa.requires_grad_(True)
        logits, aux = model.forward_aux(xa)
        (g,) = torch.autograd.grad(loss_fn(logits) + lam * loss_fn(aux[0]), xa)
        xa = torch.min(torch.max(xa.detach() + eps / 4 * g.sign(), x - eps), x + eps).clamp(0, 1)
    return xa


@pytest.mark.parametrize("attack", ["ewas_pgd20", "ewas_cw30"])
def test_ewas_protocol_is_their_evaluation(attack, batch):
    x, y = batch
    m = _model("ewas")
    seeds = (10, 11, 12, 13)
    ours = run_attack(attack, m, x, y, seed=seeds)
    theirs = _their_ewas_pgd(m, x, y, seeds, steps=ATTACKS[attack].preset["steps"], cw=attack.endswith("cw30"))
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_protocols_run_only_on_their_own_defence():
    cas_model, cifs = create_model("resnet18", width=8), _model("cifs")
    plain = create_model("resnet18", width=8, cas=False)
    assert ATTACKS["cifs_pgd20"].applies_to(cifs)
    assert not ATTACKS["cifs_pgd20"].applies_to(cas_model) and not ATTACKS["cifs_pgd20"].applies_to(plain)
    assert not ATTACKS["fsr_pgd20"].applies_to(cifs)
    assert ATTACKS["soft_mask_pgd"].applies_to(cifs) and not ATTACKS["soft_mask_pgd"].applies_to(plain)


def test_other_architectures_refuse_a_relative():
    from cas.train import TrainConfig
    with pytest.raises(ValueError, match="ResNet-18 only"):
        TrainConfig(arch="vgg16", defense="cifs").validate()
    with pytest.raises(ValueError, match="unknown defence"):
        create_model("resnet18", width=8, defense="nope")
    assert TrainConfig(defense="ewas").loss_config.aux_weight == 0.01
    assert TrainConfig(defense="ewas", aux_weight=3.0).loss_config.aux_weight == 3.0
