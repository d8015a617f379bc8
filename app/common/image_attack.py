"""One image's attack and what it does to the model's channels: the request (:class:`AttackChoice`), the
result (:class:`LabResult`, one :class:`PointView` per CAS point) and the channel summaries and tables
the pages show. No Streamlit here, so the same code runs behind :mod:`app.common.compute`, in the tests
and in ``benchmarks/app_speed.py``.

:class:`AttackChoice` holds what the user picked (budgets in the units the page shows: /255 for Linf);
:func:`attack_image` runs the attack and one forward of the natural and adversarial images together, and
returns a :class:`LabResult` of plain numpy arrays (cheap to keep, safe to share).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

import cas
from cas import data as cas_data
from cas.precision import all_cores, threads

from .attack_text import attack_label as _label
from .sharing import SharedCalls

NONE = "none"  # the clean image only
# Attacks offered in the interactive pages, in the registry's order (AutoAttack is too slow for them).
LAB_ATTACKS = (NONE,) + tuple(name for name, spec in cas.ATTACKS.items() if spec.interactive)
SORTS = ("natural", "mask", "index")
# One image's attack is bound by the cost of waking threads, not by arithmetic: one intra-op thread is
# faster, and leaves the other cores to other visitors. Batch work (many images) takes every core.
SINGLE_IMAGE_THREADS = 1
SORT_LABELS = {"natural": "natural activation (as in the paper)", "mask": "mask weight",
               "index": "channel number"}


def attack_label(name: str) -> str:
    """Menu label of an attack name (``"none"`` included)."""
    return "No attack (clean image only)" if name == NONE else _label(name)


def attacks_for(model) -> list[str]:
    """The attacks the pages offer for ``model`` (the mask-adaptive ones only for models with a mask
    defence: CAS, CIFS, EWAS or FSR)."""
    return [a for a in LAB_ATTACKS if a == NONE or cas.ATTACKS[a].for_model(model).name == a]


def blind_to_mask(name: str) -> bool:
    """A gradient attack that never looks inside the mask modules, so their argmax (or steep) mask can
    mask it."""
    spec = cas.ATTACKS.get(name)
    return bool(spec and spec.gradient and not spec.needs_cas)


@dataclass(frozen=True, init=False)
class AttackChoice:
    """An attack name plus the values of its settings: its spec's knobs (:class:`cas.attacks.Knob`),
    in the units the pages show (/255 for Linf budgets; a step of None: automatic; a target of None:
    untargeted). Settings the attack does not use are dropped; missing ones take their knob's default."""

    attack: str
    values: tuple

    def __init__(self, attack: str = "pgd", **values):
        spec = cas.ATTACKS.get(attack)
        knobs = spec.knobs if spec else ()
        object.__setattr__(self, "attack", attack)
        object.__setattr__(self, "values", tuple((k.key, values.get(k.key, k.default)) for k in knobs))

    @property
    def spec(self):
        return cas.ATTACKS.get(self.attack)

    def get(self, key: str, default=None):
        """The value of setting ``key`` (e.g. ``"eps"``), or ``default`` if this attack has none."""
        return dict(self.values).get(key, default)

    def with_seed(self, seed) -> "AttackChoice":
        """The same choice with another seed (an attack without one is returned unchanged)."""
        if self.get("seed") is None or seed is None:
            return self
        return AttackChoice(self.attack, **{**dict(self.values), "seed": int(seed)})

    def key(self) -> tuple:
        """A hashable summary of the attack and its settings (keys cached results)."""
        return (self.attack, self.values)

    def library_kwargs(self) -> dict:
        """Keyword settings for ``cas.run_attack`` in the library's units. They are passed as keywords
        (not as an ``AttackSettings``) so that they take precedence over each attack's own defaults."""
        if self.spec is None:
            return {}
        return {k.field: k.to_library(v) for k, (_, v) in zip(self.spec.knobs, self.values)
                if not (k.kind == "step" and v is None)}

    def validate(self) -> None:
        """Raise ``ValueError`` with a readable message if the spec or the library would refuse these
        settings (a choice that passed once is not checked again: every page run validates its choices)."""
        _validate(self)

    def _check(self) -> None:
        if self.attack == NONE:
            return
        spec = self.spec
        if spec is None or self.attack not in LAB_ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}")
        for knob, (_, value) in zip(spec.knobs, self.values):
            knob.check(value)
        cas.AttackSettings(norm=spec.norm, **self.library_kwargs()).validated()
        if spec.untargeted_only and self.get("target") is not None:
            raise ValueError(f"the {spec.label} attack runs untargeted here: choose 'untargeted' as the target")

    def budget(self) -> str:
        """The budget as the pages write it: '8/255' (Linf) or '0.5 (L2)'."""
        if self.spec is None:
            return "none"
        eps = self.values[0][1]  # every attack's first knob is its budget
        return f"{eps:g} (L2)" if self.spec.norm == "l2" else f"{eps:g}/255"

    def describe(self) -> str:
        """Short text such as 'PGD, ε = 8/255, 20 steps'."""
        if self.attack == NONE:
            return "no attack"
        text = f"{self.spec.label}, ε = {self.budget()}"
        if self.get("steps") is not None:
            text += f", {self.get('steps')} steps"
        if self.get("queries") is not None:
            text += f", {self.get('queries')} queries"
        if self.get("target") is not None:
            text += f", target {cas.CLASSES[self.get('target')]}"
        return text


@functools.lru_cache(maxsize=4096)
def _validate(choice: AttackChoice) -> None:
    choice._check()  # raises for a refused choice, which is then not remembered


@dataclass
class PointView:
    """Per-channel values at one mask module (CAS or a relative: ``defense``, a key of
    :data:`cas.family.DEFENSES`) or at the last block of a model without one. Arrays of shape (2, K):
    row 0 the natural image, row 1 the adversarial one. For an element-wise mask (EWAS, FSR) ``mask`` is
    its spatial mean per channel, and ``spatial_before`` and ``spatial_mask`` (2, K, H, W) hold the
    feature map the module reads and the mask itself, position by position (None otherwise)."""

    name: str
    before: np.ndarray
    mask: np.ndarray
    after: np.ndarray
    aux_probs: np.ndarray | None  # (2, classes) probabilities of the module's auxiliary head
    is_cas: bool  # a mask module is here (CAS or a relative)
    defense: str = "cas"
    spatial_before: np.ndarray | None = None
    spatial_mask: np.ndarray | None = None

    @property
    def element_wise(self) -> bool:
        return self.spatial_mask is not None


@dataclass
class LabResult:
    """Everything the pages show about one attacked image (numpy arrays only)."""

    x_nat: np.ndarray  # (3, 32, 32) float32 in [0, 1]
    x_adv: np.ndarray
    label: int  # the class the attack works against (true label, or the model's clean prediction)
    label_known: bool  # True when ``label`` is the image's real class
    choice: AttackChoice
    probs: np.ndarray  # (2, classes): final head, natural and adversarial
    modules: list[PointView]
    seconds: float  # time spent in the attack itself

    @property
    def attacked(self) -> bool:
        return self.choice.attack != NONE

    @property
    def pred_nat(self) -> int:
        return int(self.probs[0].argmax())

    @property
    def pred_adv(self) -> int:
        return int(self.probs[1].argmax())

    @property
    def delta(self) -> np.ndarray:
        return self.x_adv - self.x_nat

    @property
    def linf255(self) -> float:
        """Largest change of any pixel value, in /255."""
        return float(np.abs(self.delta).max() * 255)

    @property
    def l2(self) -> float:
        """Euclidean length of the perturbation (pixel values in [0, 1])."""
        return float(np.sqrt((self.delta.astype(np.float64) ** 2).sum()))

    @property
    def success(self) -> bool:
        """Untargeted: the adversarial prediction differs from ``label``; targeted: it is the target."""
        if not self.attacked:
            return False
        t = self.choice.get("target")
        return self.pred_adv == t if t is not None else self.pred_adv != self.label


def _views(model, x_nat: torch.Tensor, x_adv: torch.Tensor):
    """One forward of both images; the final probabilities and a PointView per mask module."""
    x = torch.cat([x_nat, x_adv])
    with torch.no_grad():
        res = model.forward_details(x, mask="pred")
    probs = torch.softmax(res.logits.float(), dim=1).numpy()
    defense = getattr(model, "defense", "cas")
    modules = []
    for d in res.details:
        aux = None if d.aux_logits is None else torch.softmax(d.aux_logits.float(), dim=1).numpy()
        spatial = [None if t is None else t.float().numpy() for t in (d.spatial_before, d.spatial_mask)]
        modules.append(PointView(d.name, d.before.float().numpy(), d.mask.float().numpy(),
                                 d.after.float().numpy(), aux, d.aux_logits is not None, defense, *spatial))
    return probs, modules


def most_changed_channel(view: PointView) -> int:
    """The channel the attack changed most: the largest total |change| of its feature map (of its
    spatial mean where the map is not kept); without any change, the clean image's strongest channel."""
    if view.spatial_before is not None:
        change = np.abs(view.spatial_before[1] - view.spatial_before[0]).sum(axis=(1, 2))
    else:
        change = np.abs(view.before[1] - view.before[0])
    if not change.max() > 0:
        return int(np.abs(view.before[0]).argmax())
    return int(change.argmax())


def predict(model, x: torch.Tensor) -> int:
    """The model's class for one image (1, 3, 32, 32)."""
    with torch.no_grad():
        return int(model(x).argmax(1)[0])


def attack_image(model, x_uint8: np.ndarray, choice: AttackChoice, label: int | None = None,
                 progress: Callable[[int, int], None] | None = None, x_adv: np.ndarray | None = None) -> LabResult:
    """Attack one image and measure its channels.

    ``x_uint8``: the image (3, 32, 32). ``label``: its real class, or None to attack the model's own
    clean prediction. ``progress(done, total)`` is called during the attack. ``x_adv``: an adversarial
    image made elsewhere (transfer from another model): then no attack runs here.
    Raises ``ValueError`` for invalid settings (before any work is done)."""
    if x_adv is None:
        return attack_images(model, [x_uint8], choice, [label], [choice.get("seed")], progress)[0]
    choice.validate()
    x = _pixels(x_uint8)
    with threads(SINGLE_IMAGE_THREADS):
        y = label if label is not None else predict(model, x)
        adv = torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).unsqueeze(0)
        return _result(model, x, adv, y, label is not None, choice, 0.0)


BATCHED = frozenset(name for name, spec in cas.ATTACKS.items() if spec.gradient)  # take one seed per image


def attack_images(model, xs_uint8: list[np.ndarray], choice: AttackChoice, labels: list[int | None],
                  seeds: list[int | None], progress: Callable[[int, int], None] | None = None) -> list[LabResult]:
    """:func:`attack_image` for several images under the same attack and schedule, each with its own
    label and seed, in one batched attack where the attack allows it (:data:`BATCHED`). Each image's
    result is exactly the one it gets alone: its random start comes from its own seed, and its
    predictions and channels come from a forward of its own two images."""
    choice.validate()
    if len(seeds) > 1 and choice.attack not in BATCHED and choice.attack != NONE:
        raise ValueError(f"{choice.attack} runs one image at a time")
    xs = torch.cat([_pixels(x) for x in xs_uint8])
    n = len(xs)
    with threads(SINGLE_IMAGE_THREADS if n == 1 else all_cores()):
        ys = torch.tensor([lb if lb is not None else predict(model, xs[i:i + 1]) for i, lb in enumerate(labels)])
        start = time.perf_counter()
        if choice.attack == NONE:
            adv = xs.clone()
        else:
            kwargs = choice.library_kwargs()
            if choice.attack in BATCHED:
                kwargs["seed"] = seeds[0] if n == 1 else tuple(int(s) for s in seeds)
            adv = cas.run_attack(choice.attack, model, xs, ys, progress=progress, **kwargs)
        seconds = (time.perf_counter() - start) / n
        return [_result(model, xs[i:i + 1], adv[i:i + 1].float(), int(ys[i]), labels[i] is not None,
                        choice if n == 1 else choice.with_seed(seeds[i]), seconds) for i in range(n)]


def _pixels(x_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x_uint8)).float().div(255).unsqueeze(0)


def _result(model, x, adv, y: int, known: bool, choice: AttackChoice, seconds: float) -> LabResult:
    probs, modules = _views(model, x, adv)
    return LabResult(x[0].numpy(), adv[0].float().numpy(), int(y), known, choice, probs, modules, seconds)


def first_view_index(model, x_all: np.ndarray, y_all: np.ndarray, choice: AttackChoice = AttackChoice(),
                     candidates: int = 32, min_confidence: float = 0.6) -> int | None:
    """Test-set index of the first image, in the fixed shuffle, that ``model`` classifies correctly
    with at least ``min_confidence`` and that ``choice`` (by default the Attack Lab's PGD) fools, so
    that a first visit shows an attack that works. One batched attack screens ``candidates`` images;
    the pick is confirmed with :func:`attack_image`, exactly as the page will run it. None if none qualifies."""
    idx = cas_data.shuffled_indices(len(y_all))[:candidates].numpy()
    x = torch.from_numpy(np.ascontiguousarray(x_all[idx])).float().div(255)
    y = torch.from_numpy(np.asarray(y_all[idx], dtype=np.int64))
    with threads(all_cores()), torch.no_grad():
        p = torch.softmax(model(x).float(), dim=1)
        good = (p.argmax(1) == y) & (p.gather(1, y[:, None])[:, 0] >= min_confidence)
        if not good.any():
            return None
        adv = cas.run_attack(choice.attack, model, x[good], y[good], **choice.library_kwargs())
        fooled = model(adv).argmax(1) != y[good]
    for i in idx[good.numpy()][fooled.numpy()]:
        if attack_image(model, x_all[i], choice, int(y_all[i])).success:
            return int(i)
    return None


# -- channel summaries and tables --------------------------------------------------------------------

def channel_order(view: PointView, sort: str) -> np.ndarray:
    """Channel order for the charts: by the natural image's activation before the mask (largest first,
    the paper's order), by the natural image's mask weight (largest first), or by channel number."""
    if sort == "natural":
        return np.argsort(-np.abs(view.before[0]), kind="stable")
    if sort == "mask":
        return np.argsort(-view.mask[0], kind="stable")
    if sort == "index":
        return np.arange(view.before.shape[1])
    raise ValueError(f"sort must be one of {SORTS}")


def module_summary(values: np.ndarray, threshold: float) -> dict[str, float]:
    """:func:`_module_summary`, computed once per server for the same values (every visitor of one
    attack's page sees the same figures)."""
    return dict(_shared_summary(np.asarray(values), float(threshold)))


def _module_summary(values: np.ndarray, threshold: float) -> dict[str, float]:
    """Summary figures of one image's channel values (K,): ``total`` (sum of |activation|), ``active``
    (channels above ``threshold`` x the largest one), ``share`` (the same as a fraction) and
    ``uniformity`` (how evenly |activation| is spread over the channels: 1 = all equal, 0 = one
    channel carries everything; the normalised entropy of cas.analysis)."""
    a = np.abs(np.asarray(values, dtype=np.float32).reshape(-1))
    on = a > threshold * max(float(a.max()), 1e-12)  # cas.analysis.activated, for one image in numpy
    p = a / a.sum() if a.sum() > 0 else a
    p = p[p > 0]
    uniformity = float(-(p * np.log(p)).sum() / np.log(a.size)) if a.size > 1 and p.size else 0.0
    return {"total": float(a.sum()), "active": int(on.sum()), "share": float(on.mean()), "uniformity": uniformity}


_shared_summary = SharedCalls(8 * 2**20).share(_module_summary)


def channel_table(result: LabResult, model_label: str = "") -> pd.DataFrame:
    """Every channel value of every mask module as one table (for the CSV download); for an
    element-wise mask the mask columns are its spatial means."""
    rows = []
    for m in result.modules:
        k = m.before.shape[1]
        frame = pd.DataFrame({
            "module": m.name, "channel": np.arange(k),
            "natural_before_mask": m.before[0], "adversarial_before_mask": m.before[1],
            "natural_mask": m.mask[0], "adversarial_mask": m.mask[1],
            "natural_after_mask": m.after[0], "adversarial_after_mask": m.after[1],
        })
        if model_label:
            frame.insert(0, "model", model_label)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)
