"""Shared fixtures. CIFAR-10 comes from the offline copy beside the checkout (``../shared/data``) or
from ``CAS_DATA``; tests that need it are skipped with a clear reason when neither exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
OFFLINE_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"

if "CAS_DATA" not in os.environ and OFFLINE_ARCHIVE.exists():
    os.environ["CAS_DATA"] = str(OFFLINE_ARCHIVE)

os.environ.setdefault("CAS_VALIDATE_FIGURES", "1")  # every figure builder's properties checked (servers too)

if "OMP_NUM_THREADS" not in os.environ:  # set it (e.g. to 1) to leave a core to other work
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _have_data() -> bool:
    from cas import data

    try:
        data.find_source()
        return True
    except data.DataNotFoundError:
        return False


@pytest.fixture(scope="session")
def cifar_test():
    """(uint8 images, labels) of the CIFAR-10 test split."""
    if not _have_data():
        pytest.skip("CIFAR-10 not found: set CAS_DATA (see cas/data.py)")
    from cas import data

    return data.load("test")


@pytest.fixture(scope="session")
def standin_pretrained(tmp_path_factory):
    """A folder in the bundled checkpoints' format (index.json + std, at, at-cas) holding small
    CPU-trained stand-ins. Point CAS_PRETRAINED_DIR at it; nothing is set globally here."""
    if not _have_data():
        pytest.skip("CIFAR-10 not found: set CAS_DATA (see cas/data.py)")
    from standin import make_standins

    return make_standins(tmp_path_factory.mktemp("standin"))


@pytest.fixture
def models_dir(standin_pretrained, monkeypatch, tmp_path):
    """Point the app at the stand-in models (and at an empty runs folder)."""
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(standin_pretrained))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    return standin_pretrained


TRAINER_DEADLINE = 180  # seconds to wait for a training run; generous for a busy machine, not a speed requirement


@pytest.fixture
def wait_for():
    """``wait_for(condition, what, run=None, interval=0.1)``: poll ``condition`` until it returns something
    true and return that; after :data:`TRAINER_DEADLINE` fail, with training run ``run``'s output."""
    import time

    def wait(condition, what: str, run: str | None = None, interval: float = 0.1):
        from app import jobs

        deadline = time.monotonic() + TRAINER_DEADLINE
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(interval)
        tail = jobs.output_tail(run) if run else ""
        pytest.fail(f"timed out waiting for {what}" + (f"; trainer output:\n{tail}" if tail else ""))

    return wait
