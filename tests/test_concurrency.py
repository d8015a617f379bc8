"""Many visitors at once: the server runs every session's attack in its own thread on one shared cached
model. Nine attacks started together must give exactly what each gives alone, and leave the model as
it was."""
from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.common import image_attack, models

# (test-image index, attack) — a different image, attack and setting for every visitor
JOBS = [
    (0, image_attack.AttackChoice("pgd", eps=8.0, steps=5, seed=1)),
    (1, image_attack.AttackChoice("fgsm", eps=4.0)),
    (2, image_attack.AttackChoice("cw", eps=8.0, steps=4, seed=2)),
    (3, image_attack.AttackChoice("pgd_l2", l2eps=0.5, steps=4, seed=3)),
    (4, image_attack.AttackChoice("square", eps=8.0, queries=60, seed=4)),
    (5, image_attack.AttackChoice("joint_pgd", eps=6.0, steps=4, seed=5)),
    (6, image_attack.AttackChoice("soft_mask_pgd", eps=8.0, steps=4, rand=False)),
    (7, image_attack.AttackChoice("pgd", eps=8.0, steps=4, target=3, seed=6)),
    (8, image_attack.AttackChoice("square", eps=6.0, queries=80, seed=7)),
]


@pytest.fixture(scope="module")
def shared_model(standin_pretrained):
    """The at-cas stand-in through the app's cached loader: the one instance every session gets."""
    loaded = models.load_from_path(standin_pretrained / "at-cas.safetensors", name="at-cas")
    assert loaded.model is models.load_from_path(standin_pretrained / "at-cas.safetensors").model
    return loaded.model


def _run(model, cifar_test, job):
    """One visitor's attack, with its progress reports."""
    index, choice = job
    x, y = cifar_test
    reports = []
    result = image_attack.attack_image(model, x[index].numpy(), choice, int(y[index]),
                              progress=lambda done, total: reports.append((done, total)))
    return result, reports


def _arrays(result: image_attack.LabResult) -> list[np.ndarray]:
    out = [result.x_adv, result.probs]
    for m in result.modules:
        out += [m.before, m.mask, m.after] + ([] if m.aux_probs is None else [m.aux_probs])
    return out


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_concurrent_attacks_match_each_alone(shared_model, cifar_test):
    model = shared_model
    state, hooks = _state(model), _hooks(model)
    alone = [_run(model, cifar_test, job) for job in JOBS]

    start = threading.Barrier(len(JOBS))

    def visitor(job):
        start.wait()  # all begin together
        return _run(model, cifar_test, job)

    for round_ in range(2):
        order = list(range(len(JOBS)))
        random.Random(round_).shuffle(order)
        with ThreadPoolExecutor(len(JOBS)) as pool:
            futures = {i: pool.submit(visitor, JOBS[i]) for i in order}
            together = {i: f.result(timeout=300) for i, f in futures.items()}
        for i, (result, reports) in together.items():
            ref, ref_reports = alone[i]
            name = JOBS[i][1].describe()
            assert result.choice == ref.choice and result.label == ref.label
            for got, want in zip(_arrays(result), _arrays(ref), strict=True):
                assert np.array_equal(got, want), f"{name}: differs when run beside the others"
            assert reports == ref_reports, f"{name}: its progress reports mixed with another's"

    assert not model.training and _hooks(model) == hooks
    after = _state(model)
    assert all(torch.equal(after[k], v) for k, v in state.items()), "the shared model was changed"
