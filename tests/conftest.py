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
