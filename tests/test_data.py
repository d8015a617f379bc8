"""Each CIFAR-10 source loads; bad paths give a clear message; GPU-style augmentation is correct."""
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cas import data


def test_offline_archive_loads(cifar_test):
    x, y = cifar_test
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10
    sub_x, sub_y = data.test_subset(200)
    assert sub_x.shape[0] == 200 and len(set(sub_y.tolist())) == 10  # shuffled: every class present
    assert torch.equal(data.test_subset(50)[1], sub_y[:50])  # a fixed order


def test_image_folder_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("CAS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for c in data.CLASSES[:3]:
            d = tmp_path / "tree" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "tree" / "test" / "cat" / "big.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.full((64, 48, 3), 7, np.uint8)).save(tmp_path / "tree" / "test" / "cat" / "big.png")
    x, y = data.load("train", tmp_path / "tree")
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = data.load("test", tmp_path / "tree")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3]  # resized to 32x32
    first = Image.open(tmp_path / "tree" / "test" / "airplane" / "0.png")
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), np.asarray(first))  # PNG is lossless


def test_torchvision_format_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CAS_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "tv" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arr = rng.integers(0, 255, (3, 3072), dtype=np.uint8)
        arrays[name] = arr
        with open(base / name, "wb") as fh:
            pickle.dump({"data": arr, "labels": [1, 2, 3]}, fh)
    x, y = data.load("test", tmp_path / "tv")
    assert torch.equal(x, torch.from_numpy(arrays["test_batch"].reshape(3, 3, 32, 32)))
    assert y.tolist() == [1, 2, 3]
    assert data.load("train", tmp_path / "tv")[0].shape == (15, 3, 32, 32)


def test_a_data_file_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.setenv("CAS_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "evil" / "cifar-10-batches-py"
    base.mkdir(parents=True)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(base / "test_batch", "wb") as fh:
        pickle.dump({"data": Boom(), "labels": [0]}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load("test", tmp_path / "evil")


def test_bad_paths_give_clear_messages(tmp_path, monkeypatch):
    with pytest.raises(data.DataNotFoundError, match="does not exist.*CAS_DATA"):
        data.load("test", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFoundError, match="holds no CIFAR-10"):
        data.load("test", tmp_path / "empty")
    (tmp_path / "odd" / "test" / "zebra").mkdir(parents=True)
    monkeypatch.setenv("CAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(data.DataNotFoundError, match="class folders"):
        data.load("test", tmp_path / "odd")
    out = subprocess.run([sys.executable, "-m", "cas.train", "--data", str(tmp_path / "missing"), "--epochs", "1",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode != 0 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_augment_crops_and_flips_consistently():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = data.augment(x, g)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    # every output is a (possibly flipped) 32x32 window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4)).float() / 255
    for n in range(2):
        found = any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(-1))
                    for oy in range(9) for ox in range(9) for w in [padded[n, :, oy:oy + 32, ox:ox + 32]])
        assert found
    assert torch.equal(data.augment(x, torch.Generator().manual_seed(0)), out)  # seeded
