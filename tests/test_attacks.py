"""Every attack: budget, image range, mode left alone, seedable, targeted success, validation."""
import pytest
import torch
from torch import nn

from cas import AttackSettings, create_model, run_attack
from cas.attacks import ATTACKS, margin


class Easy(nn.Module):
    """A linear classifier with a large margin-free gradient: easy to push to any class."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * 20


@pytest.fixture(scope="module")
def cas_model():
    torch.manual_seed(0)
    return create_model("resnet18", width=4).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def _quick(name):
    return {"steps": 3, "queries": 30} if name != "autoattack" else {}


@pytest.mark.parametrize("name", [n for n in ATTACKS if n != "autoattack"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_budget_range_and_mode(name, mode, cas_model, batch):
    x, y = batch
    getattr(cas_model, mode)()
    before = {k: v.clone() for k, v in cas_model.state_dict().items()}
    try:
        eps = 0.5 if name == "pgd_l2" else 8 / 255
        x_adv = run_attack(name, cas_model, x, y, eps=eps, **_quick(name))
        assert cas_model.training == (mode == "train")
    finally:
        cas_model.eval()
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    if name == "pgd_l2":
        assert d.norm(dim=1).max() <= 0.5 + 1e-5
    else:
        assert d.abs().max() <= 8 / 255 + 1e-6
    if mode == "eval":  # eval-mode attacks leave the weights and buffers untouched
        for k, v in cas_model.state_dict().items():
            assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in cas_model.parameters())


def test_autoattack_budget_on_an_easy_model(batch):
    x, y = batch
    model = Easy().eval()
    y = model(x).argmax(1)  # correctly classified, so AutoAttack really attacks them
    x_adv = run_attack("autoattack", model, x, y, eps=4 / 255)
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (model(x_adv).argmax(1) != y).float().mean() >= 0.5
    assert not model.training


def test_attacks_are_seedable(cas_model, batch):
    x, y = batch
    a = run_attack("pgd", cas_model, x, y, steps=2, seed=3)
    b = run_attack("pgd", cas_model, x, y, steps=2, seed=3)
    c = run_attack("pgd", cas_model, x, y, steps=2, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.random.get_rng_state()
    run_attack("square", cas_model, x, y, queries=5, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's global RNG untouched


@pytest.mark.parametrize("name", ["pgd", "cw", "fgsm", "pgd_l2"])
def test_targeted_attacks_reach_the_target(name, batch):
    x, _ = batch
    model = Easy().eval()
    y = model(x).argmax(1)
    target = (y + 3) % 10
    eps = 2.0 if name == "pgd_l2" else 16 / 255
    x_adv = run_attack(name, model, x, y, eps=eps, steps=20, target=target)
    assert (model(x_adv).argmax(1) == target).all()
    assert (margin(model(x_adv), y, target) > 0).all()


def test_untargeted_pgd_fools_the_easy_model(batch):
    x, _ = batch
    model = Easy().eval()
    y = model(x).argmax(1)
    assert (model(run_attack("pgd", model, x, y, eps=8 / 255, steps=10)).argmax(1) != y).all()


def test_cas_adaptive_attacks_need_a_cas_model(batch):
    x, y = batch
    plain = create_model("resnet18", width=4, cas=False).eval()
    for name in ("joint_pgd", "soft_mask_pgd"):
        with pytest.raises(ValueError, match="CAS models"):
            run_attack(name, plain, x, y)


@pytest.mark.parametrize("bad,match", [
    ({"eps": -1 / 255}, "eps must be"), ({"eps": 2.0}, "eps must be"), ({"steps": 0}, "steps must be"),
    ({"steps": 10**6}, "steps must be"), ({"step_size": -0.1}, "step_size"), ({"norm": "l1"}, "norm"),
    ({"restarts": 0}, "restarts"), ({"target": 12}, "target must be"),
])
def test_out_of_range_settings_are_refused(bad, match, cas_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=match):
        run_attack("pgd", cas_model, x, y, **bad)


def test_unknown_attack_and_none(cas_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="unknown attack"):
        run_attack("deepfool", cas_model, x, y)
    assert torch.equal(run_attack("none", cas_model, x, y), x)


def test_best_point_is_kept_and_restarts_help(batch):
    x, _ = batch
    model = Easy().eval()
    y = model(x).argmax(1)
    s = AttackSettings(eps=1 / 255, steps=2, restarts=3, seed=0)
    x_adv = run_attack("pgd", model, x, y, s)
    # the returned point is at least as good (by the real model's margin) as the last restart's
    single = run_attack("pgd", model, x, y, s, restarts=1)
    assert (margin(model(x_adv), y) >= margin(model(single), y) - 1e-5).all()


def test_progress_callback_counts_steps(cas_model, batch):
    x, y = batch
    seen = []
    run_attack("pgd", cas_model, x, y, steps=4, restarts=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (8, 8) and len(seen) == 8


def test_explicit_settings_win_over_attack_defaults(batch):
    x, _ = batch
    model = Easy().eval()
    y = model(x).argmax(1)
    seen = []
    run_attack("cw", model, x, y, AttackSettings(steps=5), progress=lambda d, t: seen.append(t))
    assert seen[-1] == 5  # not CW's default of 30
    x_adv = run_attack("pgd_l2", model, x, y, AttackSettings(eps=0.1, norm="l2", steps=3))
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.1 + 1e-5


def test_one_budget_per_image_is_respected():
    torch.manual_seed(0)
    model = create_model("resnet18", width=4, cas=True).eval()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    eps = torch.tensor([0.0, 1, 2, 4, 8, 16]) / 255
    for name in ("pgd", "soft_mask_pgd"):
        x_adv = run_attack(name, model, x, y, eps=eps, steps=3)
        dist = (x_adv - x).abs().flatten(1).max(1).values
        assert (dist <= eps + 1e-6).all() and dist[0] == 0 and dist[-1] > 8 / 255
    with pytest.raises(ValueError, match="per-image budgets"):
        run_attack("pgd", model, x, y, eps=eps[:4], steps=1)
    with pytest.raises(ValueError, match="one budget"):
        run_attack("square", model, x, y, eps=eps, queries=2)


class Flat(nn.Module):
    """Constant logits: no gradient and no margin, so an attack's best point is its random start."""

    num_classes = 10

    def forward(self, x):
        return x.flatten(1)[:, :10] * 0


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_per_image_seeds_draw_the_starts_of_one_image_runs(norm, eps):
    """A batch with seeds (5, 7, 9) starts each image exactly where a one-image attack with its seed
    starts it, restart after restart."""
    from cas.attacks.engine import RandomStarts

    x, y = torch.full((3, 3, 32, 32), 0.5), torch.tensor([1, 2, 3])
    s = AttackSettings(eps=eps, norm=norm, steps=1, restarts=3, seed=(5, 7, 9)).validated()
    batch = RandomStarts(x, s)
    solo = [RandomStarts(x[i:i + 1], AttackSettings(eps=eps, norm=norm, seed=seed).validated())
            for i, seed in enumerate((5, 7, 9))]
    for _ in range(s.restarts):
        assert torch.equal(batch.draw(), torch.cat([r.draw() for r in solo]))
    # through the public entry point: on a flat model the returned point is the first random start
    for seeds in ((5, 7, 9), torch.tensor([5, 7, 9])):
        together = run_attack("pgd", Flat(), x, y, eps=eps, norm=norm, steps=2, seed=seeds)
        alone = torch.cat([run_attack("pgd", Flat(), x[i:i + 1], y[i:i + 1], eps=eps, norm=norm, steps=2,
                                      seed=seed) for i, seed in enumerate((5, 7, 9))])
        assert torch.equal(together, alone) and not torch.equal(together, x)
    assert not torch.equal(together[0], together[1])  # different seeds, different starts


def test_per_image_seeds_are_checked(cas_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="4 images"):
        run_attack("pgd", cas_model, x, y, steps=1, seed=(1, 2))
    with pytest.raises(ValueError, match="per-image seeds"):
        run_attack("pgd", cas_model, x, y, steps=1, seed=(1, 2, -3, 4))
    with pytest.raises(ValueError, match="one seed"):
        run_attack("square", cas_model, x, y, queries=2, seed=(1, 2, 3, 4))


def test_accuracy_vs_eps_is_one_batched_curve():
    from cas.evaluate import accuracy_vs_eps

    torch.manual_seed(0)
    model = create_model("resnet18", width=4, cas=False).eval()
    x, y = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8), torch.randint(0, 10, (5,))
    seen = []
    curve = accuracy_vs_eps(model, x, y, "pgd", [0, 4 / 255, 0, 16 / 255], steps=2, batch_size=4,
                            progress=lambda d, t: seen.append((d, t)))
    with torch.no_grad():
        clean = 100 * float((model(x.float() / 255).argmax(1) == y).float().mean())
    assert curve[0] == curve[2] == round(clean, 2) and len(curve) == 4
    assert seen[-1] == (10, 10)  # 5 images x 2 non-zero budgets
    with pytest.raises(ValueError, match="gradient attack"):
        accuracy_vs_eps(model, x, y, "square", [8 / 255])


def test_thread_setting_is_per_calling_thread():
    import threading

    from cas.precision import threads

    before = torch.get_num_threads()
    seen = {}
    started, release = threading.Event(), threading.Event()

    def worker():
        with threads(1):
            seen["inside"] = torch.get_num_threads()
            started.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    seen["main while the worker holds one thread"] = torch.get_num_threads()
    release.set()
    t.join()
    assert seen == {"inside": 1, "main while the worker holds one thread": before}
    assert torch.get_num_threads() == before
