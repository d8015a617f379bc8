"""Which models a user can pick, what their cards say, and loading them once per process.

Models are cached with ``st.cache_resource`` and shared by every session and thread of the server, so
nothing here (or anywhere in the app) may change them: no ``.train()``/``.eval()``, no hooks, no
attributes. ``cas.load_checkpoint`` already returns them in eval mode.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

import cas
from cas.precision import fast_bf16

LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")
ALLOW_PATHS_VARIABLE = "CAS_ALLOW_SERVER_PATHS"


def server_paths_allowed() -> bool:
    """Whether users may load a checkpoint by its path on the server: only when the app serves this
    machine alone (``server.address`` localhost), or when ``CAS_ALLOW_SERVER_PATHS=1`` says so (``0``
    turns it off everywhere). Otherwise anyone who can open the app could probe the server's files."""
    flag = os.environ.get(ALLOW_PATHS_VARIABLE, "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    return (st.get_option("server.address") or "") in LOCAL_ADDRESSES

NO_MODELS_MESSAGE = (
    "**No bundled models are installed in this copy of CAS Lab** (the `pretrained/` folder has no "
    "checkpoints yet). To get a model:\n"
    "1. train one on the **Train** page — it appears in this list once its first epoch is saved; or\n"
    "2. load a CAS Lab checkpoint (`.safetensors` file with a model card): upload it, or give its path "
    "on this machine, with the choices below."
)


@dataclass(frozen=True)
class LoadedModel:
    """A ready model and what the app shows about it. ``key`` identifies the exact weights (used to key
    cached results); ``name`` is what the URL holds (None for an uploaded file)."""

    key: str
    name: str | None
    label: str
    model: object
    card: cas.ModelCard


def list_available() -> tuple[ReadOnlyDict, ...]:
    """``cas.available_models()``, read again only when one of its files changed (every page run asks,
    and reading the cards costs more than the rest of a cached page); an unreadable ``index.json``
    is reported and treated as empty. Every session gets the same listing, read-only (its mappings are
    :class:`ReadOnlyDict`, its lists tuples): a copy for each page run cost more than the rest of a
    lecture visit whose results are computed."""
    try:
        return _available(_zoo_version())
    except cas.CheckpointError as e:
        st.error(str(e))
        return ()


class ReadOnlyDict(dict):
    """A dict that refuses changes (what every session shares); ``copy.deepcopy`` gives a plain,
    writable copy."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("the model listing is shared by every session: copy it (copy.deepcopy) to change it")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __deepcopy__(self, memo):
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self):
        return dict, (dict(self),)


def _frozen(value):
    """``value`` with every dict a :class:`ReadOnlyDict` and every list a tuple, all the way down."""
    if isinstance(value, dict):
        return ReadOnlyDict((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _zoo_version() -> tuple:
    """The :func:`file_version` of every file :func:`cas.available_models` reads."""
    files = [cas.checkpoint.pretrained_dir() / "index.json", *sorted(cas.checkpoint.pretrained_dir().glob("*.safetensors"))]
    runs = cas.checkpoint.runs_dir()
    if runs.is_dir():
        files += sorted(runs.glob("*/*.safetensors"))
    out = []
    for f in files:
        try:
            out.append((str(f), file_version(f)))
        except OSError:
            out.append((str(f), None))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _available(version: tuple) -> tuple[ReadOnlyDict, ...]:
    """:func:`cas.available_models`, plus the checkpoints in the bundled folder that its ``index.json``
    does not list yet (a model just copied there), after the listed ones and before the training runs."""
    listed = cas.available_models()
    bundled = [m for m in listed if m["source"] == "bundled"]
    known = {Path(m["path"]).name for m in bundled} | {m["name"] for m in listed}
    extra = []
    for f in sorted(cas.checkpoint.pretrained_dir().glob("*.safetensors")):
        if f.name in known or f.stem in known:
            continue
        try:
            card = cas.checkpoint.read_card(f)
        except cas.CheckpointError:
            continue
        extra.append({"name": f.stem, "path": f, "source": "bundled", "card": card,
                      "description": card.get("description") or _description(card_of(card))})
    return _frozen(bundled + extra + listed[len(bundled):])


def _description(card: cas.ModelCard) -> str:
    """A line for a model that its card and the index do not describe: its training and its defence."""
    defense = cas.family.DEFENSES.get(card.defense or "")
    method = str(card.method or "?").upper()
    return f"{method} training + {defense.description}" if defense else f"{method} training"


def defense_of(model_or_card) -> cas.family.Defense | None:
    """The member of the channel-defence family whose modules a model (or its card) has
    (:data:`cas.family.DEFENSES`), None for a model without any."""
    if isinstance(model_or_card, (cas.ModelCard, dict)):
        name = card_of(model_or_card).defense
    else:
        name = getattr(model_or_card, "defense", "cas") if getattr(model_or_card, "has_cas", False) else None
    return cas.family.DEFENSES.get(name) if name else None


def defense_label(model_or_card) -> str | None:
    """"CAS", "CIFS", "EWAS" or "FSR": the label of a model's defence; None without one."""
    d = defense_of(model_or_card)
    return d.label if d else None


def _percent(v) -> str:
    return f"{v:.0f}%" if isinstance(v, (int, float)) else "?"


def card_of(card) -> cas.ModelCard:
    """A model card, typed: a :class:`cas.ModelCard` as it is, a card's JSON mapping converted."""
    return card if isinstance(card, cas.ModelCard) else cas.ModelCard.from_dict(dict(card or {}))


def card_line(card, description: str = "") -> str:
    """One line about a model: training method, its defence (CAS, CIFS, EWAS, FSR) or none, architecture,
    clean/robust accuracy, each accuracy under its column name (PGD-20, adaptive AutoAttack, worst case)."""
    from cas.robustness import column

    card = card_of(card)
    method = str(card.method or "?").upper()
    label = defense_label(card)
    kind = f"with {label}" if label else "no CAS"
    width = (card.arch_kwargs or {}).get("width")
    arch_text = f"{card.arch or '?'}" + (f" (width {width})" if width else "")
    parts = [f"{method} training, {kind}, {arch_text}"]
    acc = card.accuracy or {}
    if acc:
        clean = acc.get("clean", acc.get("natural"))
        robust = {k: v for k, v in acc.items()
                  if k not in ("clean", "natural") and isinstance(v, (int, float))}
        text = f"clean {_percent(clean)}" if clean is not None else ""
        if robust:
            text += ("; " if text else "") + ", ".join(f"{column(k)} {_percent(v)}" for k, v in robust.items())
        if text:
            parts.append("accuracy: " + text)
    else:
        held = card.heldout or {}
        if isinstance(held.get("heldout_clean"), (int, float)):
            parts.append(f"held-out clean accuracy {_percent(held['heldout_clean'])}")
    line = " · ".join(parts)
    return f"{line} — {description}" if description else line


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _load_path(path: str, version: tuple):
    """Load a checkpoint once per (path, :func:`file_version`) for the whole server; in channels_last
    memory format where the CPU does bf16 natively (the attacks' fast path), before anyone shares it.
    Returns (model, card, digest of the file's bytes): results are keyed on the weights, so a model
    replaced under the same name never gets another model's results."""
    digest = file_digest(path)
    return (*_prepared(*cas.load_checkpoint(path, device="cpu")), digest)


def file_version(path) -> tuple:
    """What changes whenever a file's bytes may have: its inode, size, modification time and status
    change time (which, unlike the modification time, no program can set back)."""
    st_ = os.stat(path)
    return (st_.st_ino, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns)


def file_digest(path) -> str:
    """The first 24 hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def _prepared(model, card):
    if fast_bf16("cpu"):
        model = model.to(memory_format=torch.channels_last)
    return model, card


def load_from_path(path: str | Path, name: str | None = None, label: str | None = None) -> LoadedModel:
    """A model from a checkpoint path (cached). Raises ``cas.CheckpointError`` with a clear message."""
    p = Path(path).expanduser()
    if not p.exists():
        raise cas.CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise cas.CheckpointError(f"{p} is a folder, not a checkpoint file")
    model, card, digest = _load_path(str(p.resolve()), file_version(p))
    return LoadedModel(f"weights:{digest}", name, label or name or p.name, model, card_of(card))


FIRST_MODEL = "at-cas"  # the Attack Lab opens on this bundled model when it is installed


def default_model(available: list[dict]) -> str | None:
    """The model a first visit shows: ``at-cas`` when installed, else the first listed one."""
    names = [m["name"] for m in available]
    return FIRST_MODEL if FIRST_MODEL in names else (names[0] if names else None)


@st.cache_resource(show_spinner="Choosing a first image…", max_entries=4)
def _first_image(path: str, version: tuple) -> int | None:
    from cas.data import DataNotFoundError

    from . import image_attack, images

    model, _, _ = _load_path(path, version)
    try:
        x, y = images.cifar_test()
    except DataNotFoundError:
        return None
    return image_attack.first_view_index(model, x, y)


def first_image(available: list[dict]) -> int:
    """Test image a first visit shows: one the default model gets right and the default attack fools
    (computed once per server; 0 when there is no model or no CIFAR-10 copy)."""
    name = default_model(available)
    entry = next((m for m in available if m["name"] == name), None)
    if entry is None:
        return 0
    try:
        idx = _first_image(str(Path(entry["path"]).resolve()), file_version(entry["path"]))
    except (cas.CheckpointError, OSError):
        return 0
    return 0 if idx is None else idx


_upload_dir: Path | None = None
_upload_dir_lock = threading.Lock()


def _private_upload_dir() -> Path:
    """This process's own folder for uploaded checkpoints (mode 0700, made once), so that no other
    user of the machine can read them or put a file in their place."""
    global _upload_dir
    with _upload_dir_lock:
        if _upload_dir is None or not _upload_dir.is_dir():
            _upload_dir = Path(tempfile.mkdtemp(prefix="cas-lab-uploads-"))
        return _upload_dir


@st.cache_resource(show_spinner="Loading the uploaded checkpoint…", max_entries=4)
def _load_upload(digest: str, _data: bytes):
    """Load uploaded checkpoint bytes once per content digest (written to a private temporary file,
    because safetensors reads from files, and deleted once loaded)."""
    f = _private_upload_dir() / f"{digest}.safetensors"
    cas.checkpoint.atomic_write(f, lambda tmp: Path(tmp).write_bytes(_data))
    try:
        return _prepared(*cas.load_checkpoint(f, device="cpu"))
    finally:
        f.unlink(missing_ok=True)


@st.cache_resource(show_spinner="Converting the checkpoint…", max_entries=2)
def _convert_upload(digest: str, filename: str, arch: str, with_cas: bool, _data: bytes, defense: str = "cas"):
    """Convert an uploaded state dict of the CAS (or CIFS, EWAS, FSR) authors' code once per (content,
    architecture, defence)."""
    from cas.convert import convert_file

    f = _private_upload_dir() / f"{digest}.pth"
    cas.checkpoint.atomic_write(f, lambda tmp: Path(tmp).write_bytes(_data))
    try:
        return _prepared(*convert_file(f, arch, with_cas, source_name=filename, defense=defense))
    finally:
        f.unlink(missing_ok=True)


def load_from_authors_upload(filename: str, data: bytes, arch: str, with_cas: bool,
                             defense: str = "cas") -> LoadedModel:
    """A model converted from an uploaded ``.pt``/``.pth`` of the CAS authors' code, or of the CIFS, EWAS
    or FSR authors' (``defense``; ResNet-18) (``cas.convert``). Raises ``cas.CheckpointError`` with the
    converter's message."""
    from cas.convert import ConvertError

    if not data:
        raise cas.CheckpointError(f"{filename} is empty")
    digest = hashlib.sha256(data).hexdigest()[:24]
    try:
        model, card = _convert_upload(digest, filename, arch, with_cas, data, defense)
    except ConvertError as e:
        raise cas.CheckpointError(str(e)) from None
    return LoadedModel(f"authors:{digest}:{arch}:{with_cas}:{defense}", None, filename, model, card_of(card))


def load_from_upload(filename: str, data: bytes) -> LoadedModel:
    """A model from uploaded checkpoint bytes (cached by content). Raises ``cas.CheckpointError``."""
    if not data:
        raise cas.CheckpointError(f"{filename} is empty")
    digest = hashlib.sha256(data).hexdigest()[:24]
    try:
        model, card = _load_upload(digest, data)
    except cas.CheckpointError as e:
        # the messages name the temporary file: name the user's file instead
        raise cas.CheckpointError(str(e).replace(f"{digest}.safetensors", filename)) from None
    return LoadedModel(f"weights:{digest}", None, filename, model, card_of(card))
