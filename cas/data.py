"""CIFAR-10 from one of three sources, as uint8 tensors (N, 3, 32, 32) + int64 labels.

Sources, named by one path (``--data PATH``, default: the ``CAS_DATA`` environment variable):

* torchvision's dataset folder (``cifar-10-batches-py`` inside it); ``download=True`` fetches it;
* an image-folder tree: ``train/<class>/*.jpg|png`` and ``test/<class>/*``, classes in CIFAR-10's order;
* an archive (``.tar``, ``.tar.gz``, ``.tar.xz``) of such a tree, unpacked once to a cache folder.

Decoded arrays are cached (``CAS_CACHE``, default ``~/.cache/cas-lab``), so the second load is instant.
torchvision's batch files are pickles: they are read with an unpickler that only admits numpy arrays
and builtin containers, so no code in a data file can run.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_REPO = Path(__file__).resolve().parent.parent


class DataNotFoundError(FileNotFoundError):
    pass


HOW_TO_GET = (
    "CIFAR-10 was not found. Point to it with --data PATH or the CAS_DATA environment variable: "
    "a torchvision CIFAR-10 folder (get one with `python -m cas.data --download --data ./data`), an "
    "image-folder tree (train/<class>/*.jpg, test/<class>/*.jpg), or a .tar.xz archive of such a tree.")


def cache_dir() -> Path:
    return Path(os.environ.get("CAS_CACHE", Path.home() / ".cache" / "cas-lab"))


def default_candidates() -> list[Path]:
    env = os.environ.get("CAS_DATA")
    out = [Path(env)] if env else []
    out += [_REPO / "data", _REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"]
    return out


def find_source(path: str | os.PathLike | None = None) -> Path:
    """Resolve the data source: the given path, or the first default candidate that holds CIFAR-10."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataNotFoundError(f"{p} does not exist. " + HOW_TO_GET)
        kind(p)  # raises a clear error for an unusable folder
        return p
    for p in default_candidates():
        if p.exists():
            try:
                kind(p)
                return p
            except DataNotFoundError:
                continue
    raise DataNotFoundError(HOW_TO_GET)


def kind(p: Path) -> str:
    """'torchvision', 'folder' or 'archive'; raises DataNotFoundError for anything else."""
    if p.is_file() and (p.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz"))):
        return "archive"
    if p.is_dir():
        if (p / "cifar-10-batches-py").is_dir() or (p / "data_batch_1").exists():
            return "torchvision"
        if (p / "test").is_dir() or (p / "train").is_dir():
            return "folder"
    raise DataNotFoundError(f"{p} holds no CIFAR-10 copy I can read. " + HOW_TO_GET)


def load(split: str = "test", path=None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of ``split`` ('train' or 'test')."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    if download:
        root = Path(path or _REPO / "data")
        fetch_torchvision(root)
        path = root
    src = find_source(path)
    k = kind(src)
    key = hashlib.sha1(f"{src.resolve()}|{src.stat().st_mtime_ns}|{k}|{split}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"cifar10-{split}-{key}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    if k == "torchvision":
        x, y = _read_torchvision(src, split)
    elif k == "folder":
        x, y = _read_folder(src / split)
    else:
        x, y = _read_folder(_unpack(src) / split)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, cached)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_subset(n: int | None = None, path=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of a fixed shuffle (seed 0): every class mixed in, whatever order
    the source stores them in (image-folder copies are sorted by class). The same images everywhere:
    the evaluator and the app (the trainer's check uses a validation split of the training set)."""
    x, y = load("test", path)
    idx = shuffled_indices(x.shape[0])[:n]
    return x[idx], y[idx]


def shuffled_indices(n_images: int) -> torch.Tensor:
    """The fixed shuffle (seed 0) of ``n_images`` test-set positions behind :func:`test_subset`."""
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(0))


def validation_split(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0):
    """((x, y) to train on, (x, y) of ``n`` validation images): a fixed seeded split of the training
    set, the same for every run, so that choices (the best epoch) never look at test images."""
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    keep, val = idx[n:].sort().values, idx[:n]
    return (x[keep], y[keep]), (x[val], y[val])


def fetch_torchvision(root: Path) -> None:
    """Download CIFAR-10 through torchvision (needs internet)."""
    from torchvision.datasets import (
        CIFAR10,  # lazy: torchvision's datasets take seconds to import, for a download
    )

    CIFAR10(str(root), train=False, download=True)


def _unpack(archive: Path) -> Path:
    digest = hashlib.sha1(f"{archive.resolve()}|{archive.stat().st_size}|{archive.stat().st_mtime_ns}".encode())
    dest = cache_dir() / f"unpacked-{digest.hexdigest()[:16]}"
    done = dest / ".complete"
    if not done.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        done.touch()
    # the tree may sit one folder down (archive/<name>/train/...)
    if not (dest / "test").is_dir() and not (dest / "train").is_dir():
        subs = [d for d in dest.iterdir() if d.is_dir() and ((d / "test").is_dir() or (d / "train").is_dir())]
        if subs:
            return subs[0]
        raise DataNotFoundError(f"{archive} does not contain train/ and test/ class folders")
    return dest


def _read_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    if not root.is_dir():
        raise DataNotFoundError(f"{root} is missing: expected class folders {', '.join(CLASSES)}")
    present = sorted(d.name for d in root.iterdir() if d.is_dir())
    unknown = set(present) - set(CLASSES)
    if unknown or not present:
        raise DataNotFoundError(f"{root} must hold the CIFAR-10 class folders ({', '.join(CLASSES)}); "
                                f"found {', '.join(present) or 'none'}")
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        d = root / name
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if im.size != (32, 32):
                        im = im.resize((32, 32), Image.BICUBIC)
                    xs.append(np.asarray(im, dtype=np.uint8))
                ys.append(label)
    if not xs:
        raise DataNotFoundError(f"no images found under {root}")
    return np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys, dtype=np.int64)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and builtin containers only (what torchvision's CIFAR batches hold)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_torchvision(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        f = base / n
        if not f.exists():
            raise DataNotFoundError(f"{f} is missing from the torchvision CIFAR-10 folder")
        with open(f, "rb") as fh:
            d = _ArrayOnlyUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


# -- GPU-side batches and augmentation ------------------------------------------------------------

def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255)


def augment(x_uint8: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding + horizontal flip, batched on the tensor's device:
    one gather, no per-sample Python. Input uint8 (N, 3, H, W) -> float (N, 3, H, W) in [0, 1]."""
    n, c, h, w = x_uint8.shape
    dev = x_uint8.device
    padded = torch.nn.functional.pad(x_uint8, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = oy[:, None] + ar_h[None]  # (N, H)
    cols = ox[:, None] + torch.where(flip[:, None], ar_w.flip(0)[None], ar_w[None])  # (N, W)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    out = padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    return to_float(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fetch or check the CIFAR-10 copy CAS Lab uses.")
    ap.add_argument("--data", default=None, help="data path (default: $CAS_DATA or the usual places)")
    ap.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision")
    a = ap.parse_args(argv)
    try:
        for split in SPLITS:
            x, y = load(split, a.data, download=a.download and split == "train")
            print(f"{split}: {tuple(x.shape)} images, {len(set(y.tolist()))} classes")
    except DataNotFoundError as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
