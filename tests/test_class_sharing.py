"""The compute door shares results between sessions and batches their one-image attacks, each image
exactly as it runs alone (app/common/compute.py, app/common/image_attack.py, on the bundled at-cas)."""
from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from app.common import compute, image_attack, models
from app.common.image_attack import AttackChoice


@pytest.fixture(scope="module")
def at_cas():
    entry = next((m for m in models.list_available() if m["name"] == "at-cas"), None)
    if entry is None:
        pytest.skip("the bundled at-cas is not installed")
    return models.load_from_path(entry["path"], "at-cas")


def _same(a: image_attack.LabResult, b: image_attack.LabResult) -> None:
    assert a.choice == b.choice and a.label == b.label
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(a.probs, b.probs)
    for ma, mb in zip(a.modules, b.modules):
        for field in ("before", "mask", "after"):
            np.testing.assert_array_equal(getattr(ma, field), getattr(mb, field))


@pytest.mark.parametrize("attack", ["pgd", "soft_mask_pgd", "cw"])
def test_a_batch_gives_each_image_exactly_its_solo_result(at_cas, cifar_test, attack):
    x_all, y_all = cifar_test
    idx = [3, 17, 42, 99]
    seeds = [0, 5, 7, 123]
    choice = AttackChoice(attack, steps=5)
    batch = image_attack.attack_images(at_cas.model, [x_all[i] for i in idx], choice,
                                       [int(y_all[i]) for i in idx], seeds)
    for i, seed, result in zip(idx, seeds, batch):
        alone = image_attack.attack_image(at_cas.model, x_all[i], choice.with_seed(seed), int(y_all[i]))
        _same(result, alone)


def test_concurrent_requests_run_in_one_batch_and_get_their_own_results(at_cas, cifar_test):
    x_all, y_all = cifar_test
    idx = list(range(200, 206))
    choice = AttackChoice("pgd", steps=4, seed=11)
    requests = [compute.image_request(at_cas.key, x_all[i], int(y_all[i]), choice) for i in idx]
    before = list(compute.ATTACK_QUEUE.batches)
    out, errors = [None] * len(idx), []
    start = threading.Barrier(len(idx))

    def visit(k):
        start.wait()
        try:
            out[k] = compute.SHARED["lab"].get(
                requests[k], lambda: compute._queued(requests[k], at_cas.model, x_all[idx[k]], "t", lambda *a: None))
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=visit, args=(k,)) for k in range(len(idx))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    new = compute.ATTACK_QUEUE.batches[len(before):]
    assert sum(new) == len(idx) and max(new) > 1, new  # one request may start alone, the rest wait together
    for k, i in enumerate(idx):
        _same(out[k], image_attack.attack_image(at_cas.model, x_all[i], choice, int(y_all[i])))


def test_results_are_keyed_on_the_weights_not_the_name(at_cas, tmp_path):
    bundled = {m["name"]: m["path"] for m in models.list_available()}
    if "at" not in bundled:
        pytest.skip("the bundled at is not installed")
    path = tmp_path / "mine.safetensors"
    shutil.copyfile(bundled["at-cas"], path)
    first = models.load_from_path(path, "mine")
    stat = os.stat(path)
    shutil.copyfile(bundled["at"], path)  # another model under the same name, same modification time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = models.load_from_path(path, "mine")
    assert first.key == at_cas.key  # the same weights share their results wherever they were loaded from
    assert second.key != first.key and second.model is not first.model


def test_attacks_started_at_once_are_stored_even_when_nobody_waits(at_cas, cifar_test):
    """A page that shows several attacks queues them together (compute.start_attacks); each is computed
    once, stored for the next visitor although the page that queued it left, and is its solo result."""
    x_all, y_all = cifar_test
    choices = [AttackChoice("pgd", steps=3, seed=21), AttackChoice("soft_mask_pgd", steps=3, seed=21)]
    x, label = x_all[310], int(y_all[310])
    requests = [compute.image_request(at_cas.key, x, label, c) for c in choices]
    batches = len(compute.ATTACK_QUEUE.batches)
    compute.start_attacks([(r, at_cas.model, x) for r in requests])
    compute.start_attacks([(r, at_cas.model, x) for r in requests])  # queued already: not twice
    deadline = time.monotonic() + 120
    while not all(r in compute.SHARED["lab"] for r in requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert compute.ATTACK_QUEUE.batches[batches:] == [1, 1]
    before = compute.SHARED["lab"].computations
    for r, c in zip(requests, choices):
        stored = compute.SHARED["lab"].peek(r)
        assert stored is not None
        _same(stored, image_attack.attack_image(at_cas.model, x, c, label))
        assert compute.attack_image(r, at_cas.model, x) is stored  # a page asking now computes nothing
    assert compute.SHARED["lab"].computations == before
    with pytest.raises(ValueError):
        compute.start_attacks([(compute.image_request(at_cas.key, x, label, AttackChoice("pgd", steps=0)),
                                at_cas.model, x)])
