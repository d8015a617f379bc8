"""The model card: what a checkpoint says about its model (:class:`ModelCard`).

A card records how to rebuild the model (``arch``, ``arch_kwargs``), how it was trained (``method``,
``cas``, ``epsilon``, ``epochs``, ``data``, ``command``, ...) and what was measured (``accuracy``:
percent per card key, see :data:`cas.robustness.COLUMNS`). It travels as JSON, in a checkpoint's
safetensors metadata and in ``pretrained/index.json``; :meth:`ModelCard.from_dict` and
:meth:`ModelCard.to_dict` convert, keeping keys this version does not know (old and new checkpoints
load alike) and the order of the keys.
"""
from __future__ import annotations

import datetime as _dt
import subprocess
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """A checkpoint's card. Fields are None (or empty) where a card does not say."""

    arch: str = ""  # a name of cas.models.list_models()
    arch_kwargs: dict = field(default_factory=dict)  # the keywords that build it (width, cas_points, ...)
    cas: bool = False  # whether the model has CAS modules
    cas_points: list | None = None  # where they sit
    format: int = FORMAT_VERSION
    name: str | None = None
    description: str | None = None
    method: str | None = None  # training objective: std, at, trades, mart (or "unknown" for converted files)
    epsilon: float | None = None  # training budget, /255
    epochs: int | None = None
    best_epoch: int | None = None
    data: str | None = None  # where the training images came from
    command: str | None = None  # the command that trained it
    train_config: dict | None = None  # every training setting
    precision: str | None = None  # of training
    num_parameters: int | None = None
    dtype: str | None = None  # of the stored weights: float32 or float16
    date: str | None = None
    git_commit: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # card key -> percent
    heldout: dict | None = None  # the trainer's held-out check of the best epoch
    evaluation: dict | None = None  # how the accuracies were measured (n, counts, stderr, flags, ...)
    warnings: list[str] = field(default_factory=list)
    train_seconds: float | None = None
    source: dict | None = None  # converted checkpoints: the original file
    source_sha: str | None = None  # bundled checkpoints: the training run they came from
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they are
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)  # the JSON keys, in order

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        """A card from its JSON mapping; unknown keys go to ``extra``. Values are taken as they are
        (:func:`cas.checkpoint.load_checkpoint` checks what it rebuilds the model from)."""
        known = {f.name for f in fields(cls)} - {"extra", "key_order"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known}, key_order=tuple(d))

    def to_dict(self) -> dict:
        """The card as a JSON mapping: the keys it was read with, in their order, then any set since
        (a card built in code: every field that is set)."""
        out = {}
        for k in self.key_order or [f.name for f in fields(self) if f.name not in ("extra", "key_order")
                               and getattr(self, f.name) not in (None, {}, [])]:
            out[k] = self.extra[k] if k in self.extra else getattr(self, k)
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def get(self, key: str, default=None):
        """A field or an unknown key by its JSON name (``default`` when the card does not have it)."""
        if key in self.extra:
            return self.extra[key]
        value = getattr(self, key, None) if key not in ("extra", "key_order") else None
        return default if value is None else value

    def updated(self, merge_dicts: bool = False, **values) -> ModelCard:
        """A copy with ``values`` set (unknown names go to ``extra``); with ``merge_dicts``, a mapping
        is merged into the mapping already there (``accuracy={"pgd20": 40.0}`` adds one figure)."""
        known = {f.name for f in fields(self)} - {"extra", "key_order"}
        extra = dict(self.extra)
        changes = {}
        for k, v in values.items():
            old = self.get(k)
            if merge_dicts and isinstance(v, dict) and isinstance(old, dict):
                v = {**old, **v}
            if k in known:
                changes[k] = v
            else:
                extra[k] = v
        order = self.key_order + tuple(k for k in values if k not in self.key_order) if self.key_order else ()
        return replace(self, **changes, extra=extra, key_order=order)

    @property
    def defense(self) -> str | None:
        """The member of the channel-defence family its modules are (:mod:`cas.family`), None without any."""
        return (self.arch_kwargs or {}).get("defense", "cas") if self.cas else None

    @classmethod
    def for_model(cls, model, **values) -> ModelCard:
        """A new card for ``model`` (architecture, CAS, size, date, commit); ``values`` (method, epsilon,
        epochs, accuracy, ...) are set on top."""
        base = {"format": FORMAT_VERSION, "arch": model.arch, "arch_kwargs": model.arch_kwargs,
                "cas": model.has_cas, "cas_points": model.cas_points,
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "git_commit": git_commit(), "accuracy": {}}
        return cls.from_dict({**base, **values})


def git_commit() -> str | None:
    """The library's git commit (short), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
