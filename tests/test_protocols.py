"""The authors' evaluation protocol (cas.attacks.protocols) against an independent plain-torch reading of it:
PGD-20 / CW of 0.003 within 0.031, unclipped uniform start, final + 2 x mean auxiliary loss with
argmax masks, signed steps, projection then clip to [0, 1], last iterate."""
import pytest
import torch
import torch.nn.functional as F

from cas import AttackSettings, create_model
from cas.attacks import ATTACKS, AUTHORS_SETTINGS, authors_cw, authors_pgd


@pytest.fixture(scope="module")
def cas_model():
    torch.manual_seed(1)
    m = create_model("resnet18", width=4)
    # random but not degenerate BN statistics, so the auxiliary heads disagree between images
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)


def reference(model, X, y, kind, seed, eps=0.031, steps=20, step=0.003, beta=2.0, chunk=None):
    """Written from the protocol's description, not from cas.attacks.protocols."""
    gen = torch.Generator().manual_seed(seed)
    X_pgd = X.clone() + torch.empty(X.shape).uniform_(-eps, eps, generator=gen)
    for _ in range(steps):
        X_pgd = X_pgd.detach().requires_grad_(True)
        out, extra = model.forward_aux(X_pgd, mask="pred")
        if kind == "pgd":
            loss = F.cross_entropy(out, y)
            extra_loss = sum(F.cross_entropy(o, y) for o in extra) / len(extra)
        else:
            def cw_batches(o):  # their loader's batches, each clipped on its own
                c = chunk or len(y)
                return sum(cw_on(o[i:i + c], y[i:i + c]) for i in range(0, len(y), c))

            def cw_on(o, y):
                correct = o[torch.arange(len(y)), y].sum()
                top2 = o.argsort(1)[:, -2:]
                wrong_idx = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
                return -F.relu(correct - o[torch.arange(len(y)), wrong_idx].sum())
            loss = cw_batches(out)
            extra_loss = sum(cw_batches(o) for o in extra) / len(extra)
        loss = loss + beta * extra_loss
        loss.backward()
        X_pgd = X_pgd.detach() + step * X_pgd.grad.sign()
        X_pgd = torch.clamp(X + torch.clamp(X_pgd - X, -eps, eps), 0, 1)
    return X_pgd


@pytest.mark.parametrize("kind,fn", [("pgd", authors_pgd), ("cw", authors_cw)])
def test_same_points_as_an_independent_reading(cas_model, batch, kind, fn):
    x, y = batch
    state = {k: v.clone() for k, v in cas_model.state_dict().items()}
    for seed in (0, 7):
        ours = fn(cas_model, x, y, AttackSettings(**{**ATTACKS[f"authors_{kind}"].preset, "seed": seed}))
        ref = reference(cas_model, x, y, kind, seed)
        assert torch.equal(ours, ref), f"{kind}, seed {seed}: max difference {(ours - ref).abs().max()}"
    assert not cas_model.training
    assert all(torch.equal(v, state[k]) for k, v in cas_model.state_dict().items())


def test_defaults_are_their_schedule(cas_model, batch):
    x, y = batch
    assert (AUTHORS_SETTINGS.eps, AUTHORS_SETTINGS.steps, AUTHORS_SETTINGS.step_size,
            AUTHORS_SETTINGS.aux_weight) == (0.031, 20, 0.003, 2.0)
    a = authors_pgd(cas_model, x, y)
    assert torch.equal(a, reference(cas_model, x, y, "pgd", 0))
    assert (a - x).abs().max() <= 0.031 + 1e-6 and a.min() >= 0 and a.max() <= 1
    b = authors_pgd(cas_model, x, y, seed=1)
    assert not torch.equal(a, b)


def test_last_iterate_not_best(cas_model, batch):
    """One step from a random start: the point returned is where the schedule ends, wherever that is."""
    x, y = batch
    one = authors_pgd(cas_model, x, y, steps=1)
    assert torch.equal(one, reference(cas_model, x, y, "pgd", 0, steps=1))


def test_plain_model_and_refusals(batch):
    torch.manual_seed(0)
    plain = create_model("resnet18", width=4, cas=False).eval()
    x, y = batch
    out = authors_pgd(plain, x, y)
    assert (out - x).abs().max() <= 0.031 + 1e-6
    with pytest.raises(ValueError):
        authors_pgd(plain, x, y, target=1)
    with pytest.raises(ValueError):
        authors_cw(plain, x, y, norm="l2", eps=0.5)


def test_cw_clips_the_summed_margin_of_each_batch(cas_model, batch):
    """Their clip acts on a batch's summed margin: batches of 3 differ from one batch of 6."""
    x, y = batch
    three = authors_cw(cas_model, x, y, batch=3)
    assert torch.equal(three, reference(cas_model, x, y, "cw", 0, chunk=3))
    assert torch.equal(authors_cw(cas_model, x, y), reference(cas_model, x, y, "cw", 0))
    with pytest.raises(ValueError):
        authors_cw(cas_model, x, y, batch=0)
