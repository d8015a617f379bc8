"""Attack-failure indicators (cas.diagnose): each one on a constructed case where it must fire and on
one where it must not, with tiny models so that everything runs in seconds."""
import pytest
import torch
from torch import nn

from cas import AttackSettings, create_model, run_attack
from cas.diagnose import ALL, QueryRecorder, as_dicts, diagnose, fired, to_markdown, to_text


class Linear(nn.Module):
    """A linear classifier on raw pixels: its gradient is exact and PGD converges in a few steps."""

    num_classes = 10

    def __init__(self, scale=1.0, seed=12345):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 32 * 32, 10)
        with torch.no_grad():
            self.fc.weight.copy_((torch.rand(10, 3 * 32 * 32, generator=g) * 2 - 1) / 55)
            self.fc.bias.zero_()
        self.scale = scale

    def forward(self, x):
        return self.fc((x - 0.5).flatten(1)) * self.scale


class Quantised(nn.Module):
    """The same classifier on images rounded to 256 grey levels: right answers, zero gradient."""

    num_classes = 10

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(torch.round(x * 255) / 255)


class Constant(nn.Module):
    """Always class 0, whatever the input, with a zero (but finite) gradient."""

    num_classes = 10

    def forward(self, x):
        return torch.tensor([5.0] + [0.0] * 9, device=x.device) + 0 * x.flatten(1).sum(1, keepdim=True)


class Noisy(nn.Module):
    """A classifier with random noise on its logits at test time."""

    num_classes = 10

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        out = self.base(x)
        return out + 2 * torch.randn_like(out)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(20, 3, 32, 32, generator=g)


def labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def one(indicators, key):
    (ind,) = [i for i in indicators if i.key == key]
    return ind


def test_silent_success_fires_when_the_attack_returns_less_than_it_saw(images):
    model = Linear(20)
    y = labels(model, images)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))[:7]

    def hides(m, x, yy, settings, progress=None):  # finds adversarial points, shows a shuffled few, returns x
        strong = run_attack("pgd", model, x, yy, settings)  # on the unwatched model
        m(strong[perm])
        return x.clone()

    s = AttackSettings(eps=8 / 255, steps=10)
    ind = one(diagnose(model, images, y, hides, s, indicators=("silent_success",)), "silent_success")
    assert ind.fired and sorted(ind.details["images"]) == sorted(perm.tolist())
    ok = one(diagnose(model, images, y, "pgd", s, indicators=("silent_success",)), "silent_success")
    assert ok.fired is False and ok.details["robust_accuracy"] == 0


def test_recorder_maps_subsets_and_ignores_points_outside_the_budget(images):
    model = Linear(20)
    y = labels(model, images)
    rec = QueryRecorder(model, images, y, eps=8 / 255)
    far = (images + 0.5).clamp(0, 1)  # not within the budget of any image
    rec(far[:5])
    assert not rec.visited.any() and rec.unmapped == 5
    strong = run_attack("pgd", model, images, y, AttackSettings(eps=8 / 255, steps=10))
    rec(strong[[3, 11]])
    assert rec.visited.nonzero().flatten().tolist() == [3, 11]


def test_incomplete_fires_on_a_cut_attack_only(images):
    model = Linear(1)
    y = labels(model, images)
    cut = diagnose(model, images, y, "pgd", AttackSettings(eps=0.5 / 255, steps=3, step_size=0.05 / 255),
                   indicators=("incomplete",))
    assert one(cut, "incomplete").fired
    full = diagnose(model, images, y, "pgd", AttackSettings(eps=0.5 / 255, steps=40, step_size=0.5 / 255 / 4),
                    indicators=("incomplete",))
    assert one(full, "incomplete").fired is False


def test_unbounded_and_zero_gradients_fire_on_a_masked_model(images):
    y = torch.zeros(20, dtype=torch.long)
    res = diagnose(Constant(), images, y, "pgd", AttackSettings(eps=8 / 255, steps=5),
                   indicators=("unbounded", "zero_gradients"))
    assert one(res, "unbounded").fired and one(res, "unbounded").value == 100
    assert one(res, "zero_gradients").fired
    model = Linear(1)
    y = labels(model, images)
    res = diagnose(model, images, y, "pgd", AttackSettings(eps=0.5 / 255, steps=5),
                   indicators=("unbounded", "zero_gradients"))
    assert one(res, "unbounded").fired is False and one(res, "unbounded").images > 0
    assert one(res, "zero_gradients").fired is False


def test_zero_gradients_on_a_step_function(images):
    model = Quantised(Linear(20))
    y = labels(model, images)
    assert one(diagnose(model, images, y, "pgd", AttackSettings(steps=2), indicators=("zero_gradients",)),
               "zero_gradients").fired


def test_unstable_and_nondeterministic_fire_on_test_time_noise(images):
    base = Linear(20)
    y = labels(base, images)
    which = ("unstable", "nondeterministic")
    noisy = diagnose(Noisy(base), images, y, "pgd", AttackSettings(steps=2), indicators=which)
    assert one(noisy, "unstable").fired and one(noisy, "nondeterministic").fired
    calm = diagnose(base, images, y, "pgd", AttackSettings(steps=2), indicators=which)
    assert one(calm, "unstable").fired is False and one(calm, "nondeterministic").fired is False


def test_transfer_and_square_beat_a_gradient_free_of_signal_model(images):
    base = Linear(20)
    target = Quantised(base)
    y = labels(target, images)
    s = AttackSettings(eps=8 / 255, steps=5, random_start=False)
    res = diagnose(target, images, y, "pgd", s, surrogate=base, indicators=("transfer", "square"),
                   subsets={"square_queries": 200})
    assert one(res, "transfer").fired and one(res, "square").fired
    cache = {}
    first = diagnose(target, images, y, "pgd", s, indicators=("square",), subsets={"square_queries": 200},
                     cache=cache)
    again = diagnose(target, images, y, "pgd", s, indicators=("square",), subsets={"square_queries": 200},
                     cache=cache)
    assert one(again, "square").value == one(first, "square").value == one(res, "square").value
    assert one(again, "square").seconds < one(first, "square").seconds
    y0 = torch.zeros(20, dtype=torch.long)
    res = diagnose(Constant(), images, y0, "pgd", s, surrogate=base, indicators=("transfer", "square"),
                   subsets={"square_queries": 200})
    assert one(res, "transfer").fired is False and one(res, "square").fired is False
    none = diagnose(Constant(), images, y0, "pgd", s, indicators=("transfer",))
    assert one(none, "transfer").fired is None


def test_cas_model_every_indicator_and_formatting(images):
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = images[:6], labels(model, images[:6])
    torch.manual_seed(0)
    surrogate = create_model("resnet18", width=4, cas=False).eval()
    for attack in ("authors_pgd", "soft_mask_pgd", "joint_pgd"):
        res = diagnose(model, x, y, attack, AttackSettings(steps=3, amp=False) if attack != "authors_pgd" else None,
                       surrogate=surrogate, subsets={"square_queries": 20, "unbounded": 2})
        assert [i.key for i in res] == list(ALL)
        assert isinstance(fired(res), list) and len(as_dicts(res)) == len(ALL)
        md, txt = to_markdown(res, title=attack), to_text(res)
        assert "Silent success" in md and "Unbounded" in txt
        if attack == "soft_mask_pgd":  # every soft-mask forward was followed by the real model's on its rows
            assert one(res, "silent_success").details["queried_rows"] > 0
            assert one(res, "silent_success").details["extra_forwards"] == 0
    assert not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_unknown_names_are_refused(images):
    with pytest.raises(ValueError):
        diagnose(Linear(), images, torch.zeros(20, dtype=torch.long), "nope")
    with pytest.raises(ValueError):
        diagnose(Linear(), images, torch.zeros(20, dtype=torch.long), "pgd", indicators=("nope",))


def test_command_line_on_a_bundled_model(cifar_test, capsys, tmp_path):
    from cas.diagnose import main

    out = tmp_path / "ind.json"
    main(["at", "--n", "8", "--attack", "pgd", "--indicators", "silent_success,zero_gradients,nondeterministic",
          "--markdown", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| Silent success |" in text and "Non-deterministic forward" in text
    import json

    assert [d["key"] for d in json.loads(out.read_text())] == ["silent_success", "zero_gradients", "nondeterministic"]


def test_queries_the_real_model_never_sees_are_judged(images):
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).eval()
    x = images[:4]
    y = labels(model, x)
    rec = QueryRecorder(model, x, y, eps=8 / 255)
    rec.forward_aux(x, mask="soft")
    rec.forward_aux(x, mask="soft")  # the first one is judged now
    assert rec.extra_forwards == 4
    rec.flush()
    assert rec.extra_forwards == 8 and rec.rows == 8
    rec(x)  # the real model: judged from its own logits
    assert rec.extra_forwards == 8 and rec.rows == 12
