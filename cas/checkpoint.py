"""Self-describing checkpoints: safetensors weights + a JSON model card in the file's metadata.

A card records how to rebuild the model (``arch``, ``arch_kwargs``), how it was trained (``method``,
``cas``, ``epsilon``, ``epochs``, ``data``, ``command``) and what was measured (``accuracy``: percent per
attack). Loading never unpickles anything: safetensors holds tensors only, and the card is JSON.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .cards import FORMAT_VERSION, ModelCard, git_commit  # noqa: F401 (importable from here as before)
from .models import CASNet, create_model, list_models
from .runs import BEST, RunFolder

CARD_KEY = "cas_lab_card"
_REPO = Path(__file__).resolve().parent.parent


def pretrained_dir() -> Path:
    """The bundled checkpoints' folder (``CAS_PRETRAINED_DIR`` overrides ``pretrained/``)."""
    return Path(os.environ.get("CAS_PRETRAINED_DIR", _REPO / "pretrained"))


def runs_dir() -> Path:
    """Where training runs go (``CAS_RUNS_DIR`` overrides ``runs/``); each run's best checkpoint is
    ``<runs>/<name>/best.safetensors``."""
    return Path(os.environ.get("CAS_RUNS_DIR", _REPO / "runs"))


MAX_CHECKPOINT_BYTES = 2 * 1024**3  # far above any CIFAR model; refuses accidental huge files
MAX_HEADER_BYTES = 16 * 1024**2  # a WRN-34-10's header is about 20 kB


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message says why and what to do."""


def make_card(model: CASNet, **fields) -> dict:
    """A model card for ``model`` as a JSON mapping; ``fields`` (method, epsilon, epochs, accuracy, ...)
    are merged in. :meth:`ModelCard.for_model` gives the typed card."""
    return ModelCard.for_model(model, **fields).to_dict()


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, flush it to disk, then rename: readers never
    see half a file, and a process killed at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; the result gets the usual mode
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path, model: CASNet, card: dict | ModelCard | None = None, fp16: bool = False) -> Path:
    """Save weights (optionally as fp16, halving the size) and the card (a :class:`ModelCard` or its
    JSON mapping), atomically."""
    card = card.to_dict() if isinstance(card, ModelCard) else dict(card or make_card(model))
    card["dtype"] = "float16" if fp16 else "float32"
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if fp16 and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata={CARD_KEY: json.dumps(card)}))
    return Path(path)


def _read_header(path: Path) -> dict:
    """The safetensors header (tensor names, dtypes, shapes, offsets and metadata), read as JSON only."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if 0 < n <= size - 8 and n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path.name}: its safetensors header is {n / 1024**2:.0f} MB; CAS Lab "
                                  f"checkpoints have headers under {MAX_HEADER_BYTES // 1024**2} MB")
        try:
            if n <= 0 or n > size - 8:
                raise ValueError
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CheckpointError(_not_safetensors(path)) from None
    if not isinstance(header, dict):
        raise CheckpointError(_not_safetensors(path))
    return header


def read_card(path) -> dict:
    """The model card stored in a checkpoint, without loading the weights."""
    path = _check_file(Path(path))
    meta = _read_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict) or CARD_KEY not in meta:
        raise CheckpointError(f"{path.name} is a safetensors file but has no CAS Lab model card, so the "
                              "model cannot be rebuilt. Save checkpoints with cas.save_checkpoint.")
    try:
        card = json.loads(meta[CARD_KEY])
    except (TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{path.name}: its model card is not valid JSON") from None
    if not isinstance(card, dict) or "arch" not in card:
        raise CheckpointError(f"{path.name}: its model card has no 'arch' field")
    return card


def read_model_card(path) -> ModelCard:
    """The typed model card stored in a checkpoint, without loading the weights."""
    return ModelCard.from_dict(read_card(path))


def update_card(path, **fields) -> dict:
    """Merge ``fields`` into the card of the checkpoint at ``path`` (weights are kept as they are)."""
    path = Path(path)
    card = read_card(path)
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k] = {**card[k], **v}
        else:
            card[k] = v
    tensors = load_file(str(path))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={CARD_KEY: json.dumps(card)}))
    return card


# what a card may ask for: integers in these ranges (a lying card must not make a giant model)
ARCH_LIMITS = {"width": (1, 1024), "depth": (4, 106), "widen_factor": (1, 20), "num_classes": (2, 1000)}
# safetensors dtypes accepted for floating-point and for integer tensors (batch-norm counters)
FLOAT_DTYPES, INT_DTYPES = ("F32", "F16", "BF16"), ("I64", "I32")


def _model_for(path: Path, card: dict) -> tuple[CASNet, dict]:
    """The model the card describes, built on the meta device (no memory for its weights), and the
    arguments that build it."""
    arch = card["arch"]
    if not isinstance(arch, str) or arch not in list_models():
        raise CheckpointError(f"{path.name}: unknown architecture {arch!r} "
                              f"(this version knows {', '.join(list_models())})")
    kwargs = card.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path.name}: its card's architecture arguments are not a mapping")
    kwargs = dict(kwargs)
    if "cas_positions" in kwargs:  # the name of cas_points in cards written before version 0.2
        kwargs["cas_points"] = kwargs.pop("cas_positions")
    for key, (low, high) in ARCH_LIMITS.items():
        v = kwargs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high):
            raise CheckpointError(f"{path.name}: its card asks for {key} = {v!r}; allowed: whole numbers "
                                  f"from {low} to {high}")
    try:
        with torch.device("meta"):
            return create_model(arch, **kwargs), kwargs
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path.name}: its card's architecture arguments are invalid: {e}") from None


def _check_tensors(path: Path, card: dict, header: dict, own: dict) -> None:
    """Names, shapes and dtypes in the file's header against the model's; raises CheckpointError."""
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not all(isinstance(v, dict) for v in tensors.values()):
        raise CheckpointError(_not_safetensors(path))
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes, dtypes = [], []
    for k, v in own.items():
        if k not in tensors:
            continue
        shape, dtype = tensors[k].get("shape"), tensors[k].get("dtype")
        if not isinstance(shape, list) or tuple(shape) != tuple(v.shape):
            shapes.append(f"{k}: file {tuple(shape) if isinstance(shape, list) else shape} "
                          f"vs model {tuple(v.shape)}")
        elif dtype not in (FLOAT_DTYPES if v.is_floating_point() else INT_DTYPES):
            dtypes.append(f"{k} is {dtype}")
    if missing or unexpected or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        if dtypes:
            parts.append(f"{len(dtypes)} tensors of a wrong dtype (e.g. {dtypes[0]}; weights must be "
                         f"{', '.join(FLOAT_DTYPES)})")
        raise CheckpointError(f"{path.name}: weights do not match the {card['arch']} its card describes: "
                              + "; ".join(parts))


def load_checkpoint(path, device="cpu") -> tuple[CASNet, dict]:
    """Rebuild the model described by the checkpoint's card and load its weights (as float32).

    Everything is checked before weights are read: the card's architecture and its arguments, and
    every tensor's name, shape and dtype; then every weight must be a finite number. Any problem
    raises :class:`CheckpointError` naming it."""
    path = Path(path)
    card = read_card(path)
    meta_model, kwargs = _model_for(path, card)
    _check_tensors(path, card, _read_header(path), meta_model.state_dict())
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{_not_safetensors(path)} ({e})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path.name}: {len(bad)} tensors hold NaN or infinite values (e.g. "
                              f"{', '.join(bad[:3])}); the run that saved it probably diverged")
    model = create_model(card["arch"], **kwargs)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.to(device).eval()
    return model, card


def load_model_and_card(path, device="cpu") -> tuple[CASNet, ModelCard]:
    """:func:`load_checkpoint` with the card typed: the model in eval mode and its :class:`ModelCard`."""
    model, card = load_checkpoint(path, device)
    return model, ModelCard.from_dict(card)


def pretrained_index(directory=None) -> list[dict]:
    """Entries of ``pretrained/index.json`` (empty if there is none)."""
    directory = Path(directory or pretrained_dir())
    f = directory / "index.json"
    if not f.exists():
        return []
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from None
    return data.get("models", []) if isinstance(data, dict) else data


def resolve(name_or_path, directory=None) -> Path:
    """A bundled model's name (see ``pretrained/index.json``) or a checkpoint path -> a file path."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists():
        return p
    directory = Path(directory or pretrained_dir())
    for entry in pretrained_index(directory):
        if entry.get("name") == str(name_or_path):
            return directory / entry["file"]
    run = RunFolder(runs_dir() / str(name_or_path)).best
    if run.exists():
        return run
    names = [e.get("name") for e in pretrained_index(directory)]
    raise CheckpointError(f"no bundled model or file named {name_or_path!r}"
                          + (f"; bundled models: {', '.join(names)}" if names else
                             "; no bundled models are installed (see pretrained/README.md)"))


def available_models() -> list[dict]:
    """Every model a user can pick: the bundled ones (index order), then finished training runs.
    Each entry: ``name``, ``path``, ``source`` ('bundled' or 'run'), ``description`` and ``card``
    (a bundled card lacking accuracies gets those listed in ``index.json``).
    Unreadable run checkpoints are skipped (a run still writing its first epoch has none yet)."""
    out = []
    d = pretrained_dir()
    for e in pretrained_index(d):
        path = d / e["file"]
        try:
            card = read_card(path)
        except CheckpointError:
            continue
        listed = {k: v for k, v in (e.get("accuracy") or {}).items() if v is not None}
        card["accuracy"] = {**listed, **(card.get("accuracy") or {})}  # the card's own numbers win
        out.append({"name": e["name"], "path": path, "source": "bundled",
                    "description": e.get("description", ""), "card": card})
    r = runs_dir()
    if r.is_dir():
        for f in sorted(r.glob(f"*/{BEST}")):
            try:
                card = read_card(f)
            except CheckpointError:
                continue
            out.append({"name": f.parent.name, "path": f, "source": "run",
                        "description": card.get("description", ""), "card": card})
    return out


def load_model(name_or_path, device="cpu", directory=None) -> CASNet:
    """A ready model in eval mode, from a bundled name (``"at-cas"``) or a checkpoint path."""
    return load_checkpoint(resolve(name_or_path, directory), device)[0]


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path.name} is {size / 1024**3:.1f} GB, too large to be a CIFAR model checkpoint")
    return path


def _not_safetensors(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and 2 <= head[1] <= 5):
        return (f"{path.name} looks like a PyTorch pickle (.pt/.pth). Pickles can run code when loaded, so "
                "CAS Lab only reads safetensors checkpoints with a model card (save with cas.save_checkpoint)")
    return (f"{path.name} is not a valid safetensors checkpoint: the file is truncated, corrupted, "
            "or in another format")
