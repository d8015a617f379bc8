"""Attack one image and measure what happens in the model's channels. No Streamlit here, so the same
code runs in the pages, the tests and ``benchmarks/app_latency.py``.

:class:`AttackChoice` holds what the user picked (budgets in the units the page shows: /255 for Linf);
:func:`analyse` runs the attack and one forward of the natural and adversarial images together, and
returns a :class:`LabResult` of plain numpy arrays (cheap to keep, safe to share).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
import torch

import cas
from cas import analysis
from cas import data as cas_data
from cas.precision import all_cores, threads

# Attacks offered in the interactive pages, in menu order (AutoAttack is too slow for them).
LAB_ATTACKS = ("none", "fgsm", "pgd", "cw", "pgd_l2", "square", "joint_pgd", "soft_mask_pgd")
ITERATIVE = {"pgd", "cw", "pgd_l2", "joint_pgd", "soft_mask_pgd"}
PLAIN_GRADIENT = {"fgsm", "pgd", "cw", "pgd_l2"}  # attacks that cannot see CAS's argmax mask
SORTS = ("natural", "mask", "index")
# One image's attack is bound by the cost of waking threads, not by arithmetic: one intra-op thread is
# faster, and leaves the other cores to other visitors. Batch work (many images) takes every core.
SINGLE_IMAGE_THREADS = 1
SORT_LABELS = {"natural": "natural activation (as in the paper)", "mask": "mask weight",
               "index": "channel number"}


def attack_label(name: str) -> str:
    """Menu label of an attack name (``"none"`` included)."""
    return "No attack (clean image only)" if name == "none" else cas.ATTACKS[name].label


def attacks_for(model) -> list[str]:
    """The attacks the pages offer for ``model`` (the CAS-adaptive ones only for CAS models)."""
    has_cas = bool(getattr(model, "has_cas", False))
    return [a for a in LAB_ATTACKS if a == "none" or has_cas or not cas.ATTACKS[a].cas_only]


@dataclass(frozen=True)
class AttackChoice:
    """An attack and its settings as the user chose them. ``eps`` and ``step`` are in /255 for Linf
    attacks; ``l2_eps`` and ``l2_step`` in input units for PGD-L2. ``step`` None: the library's
    automatic step size. ``target`` None: untargeted."""

    attack: str = "pgd"
    eps: float = 8.0
    steps: int = 20
    step: float | None = None
    random_start: bool = True
    target: int | None = None
    seed: int = 0
    queries: int = 300
    l2_eps: float = 0.5
    l2_step: float | None = None

    def key(self) -> tuple:
        """A hashable summary of the fields that matter for this attack (keys cached results)."""
        return tuple(sorted(self.relevant().items()))

    def relevant(self) -> dict:
        """The fields this attack uses, in the page's units."""
        a = self.attack
        if a == "none":
            return {"attack": a}
        out = {"attack": a, "seed": self.seed, "target": self.target}
        if a == "pgd_l2":
            out.update(eps=self.l2_eps, step=self.l2_step, steps=self.steps, random_start=self.random_start)
        else:
            out["eps"] = self.eps
        if a == "fgsm":
            out["step"] = self.step
        if a in ITERATIVE and a != "pgd_l2":
            out.update(step=self.step, steps=self.steps, random_start=self.random_start)
        if a == "square":
            out.update(queries=self.queries)
        return out

    def library_kwargs(self) -> dict:
        """Keyword settings for ``cas.run_attack`` in the library's units. They are passed as keywords
        (not as an ``AttackSettings``) so that they take precedence over each attack's own defaults."""
        a = self.attack
        if a == "none":
            return {}
        kw: dict = {"seed": int(self.seed), "target": self.target}
        if a == "pgd_l2":
            kw.update(eps=float(self.l2_eps), steps=int(self.steps), random_start=bool(self.random_start))
            if self.l2_step is not None:
                kw["step_size"] = float(self.l2_step)
            return kw
        kw["eps"] = float(self.eps) / 255
        if a == "fgsm" and self.step is not None:
            kw["step_size"] = float(self.step) / 255
        if a in ITERATIVE:
            kw.update(steps=int(self.steps), random_start=bool(self.random_start))
            if self.step is not None:
                kw["step_size"] = float(self.step) / 255
        if a == "square":
            kw["queries"] = int(self.queries)
        return kw

    def validate(self) -> None:
        """Raise ``ValueError`` with a readable message if the library would refuse these settings."""
        if self.attack not in LAB_ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}")
        if self.attack == "none":
            return
        kw = self.library_kwargs()
        if self.attack == "pgd_l2":
            kw["norm"] = "l2"
        cas.AttackSettings(**kw).validated()
        if self.attack == "square" and self.target is not None:
            raise ValueError("the Square attack runs untargeted here: choose 'untargeted' as the target")

    def describe(self) -> str:
        """Short text such as 'PGD, ε = 8/255, 20 steps'."""
        a = self.attack
        if a == "none":
            return "no attack"
        text = cas.ATTACKS[a].label
        text += f", ε = {self.l2_eps:g} (L2)" if a == "pgd_l2" else f", ε = {self.eps:g}/255"
        if a in ITERATIVE:
            text += f", {self.steps} steps"
        if a == "square":
            text += f", {self.queries} queries"
        if self.target is not None:
            text += f", target {cas.CLASSES[self.target]}"
        return text


@dataclass
class ModuleView:
    """Per-channel values at one CAS module (or the last block of a model without CAS).
    Arrays of shape (2, K): row 0 the natural image, row 1 the adversarial one."""

    name: str
    before: np.ndarray
    mask: np.ndarray
    after: np.ndarray
    aux_probs: np.ndarray | None  # (2, classes) probabilities of the module's auxiliary head
    is_cas: bool


@dataclass
class LabResult:
    """Everything the pages show about one attacked image (numpy arrays only)."""

    x_nat: np.ndarray  # (3, 32, 32) float32 in [0, 1]
    x_adv: np.ndarray
    label: int  # the class the attack works against (true label, or the model's clean prediction)
    label_known: bool  # True when ``label`` is the image's real class
    choice: AttackChoice
    probs: np.ndarray  # (2, classes): final head, natural and adversarial
    modules: list[ModuleView]
    seconds: float  # time spent in the attack itself

    @property
    def attacked(self) -> bool:
        return self.choice.attack != "none"

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
        t = self.choice.target
        return self.pred_adv == t if t is not None else self.pred_adv != self.label


def _views(model, x_nat: torch.Tensor, x_adv: torch.Tensor):
    """One forward of both images; the final probabilities and a ModuleView per CAS point."""
    with torch.no_grad():
        res = model.forward_details(torch.cat([x_nat, x_adv]), mask="pred")
    probs = torch.softmax(res.logits.float(), dim=1).numpy()
    modules = []
    for d in res.details:
        aux = None if d.aux_logits is None else torch.softmax(d.aux_logits.float(), dim=1).numpy()
        modules.append(ModuleView(d.name, d.before.float().numpy(), d.mask.float().numpy(),
                                  d.after.float().numpy(), aux, d.aux_logits is not None))
    return probs, modules


def predict(model, x: torch.Tensor) -> int:
    """The model's class for one image (1, 3, 32, 32)."""
    with torch.no_grad():
        return int(model(x).argmax(1)[0])


def analyse(model, x_uint8: np.ndarray, choice: AttackChoice, label: int | None = None,
            progress: Callable[[int, int], None] | None = None, x_adv: np.ndarray | None = None) -> LabResult:
    """Attack one image and measure its channels.

    ``x_uint8``: the image (3, 32, 32). ``label``: its real class, or None to attack the model's own
    clean prediction. ``progress(done, total)`` is called during the attack. ``x_adv``: an adversarial
    image made elsewhere (transfer from another model): then no attack runs here.
    Raises ``ValueError`` for invalid settings (before any work is done)."""
    choice.validate()
    x = torch.from_numpy(np.ascontiguousarray(x_uint8)).float().div(255).unsqueeze(0)
    known = label is not None
    with threads(SINGLE_IMAGE_THREADS):
        y = torch.tensor([label if known else predict(model, x)])
        start = time.perf_counter()
        if x_adv is not None:
            adv = torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).unsqueeze(0)
        elif choice.attack == "none":
            adv = x.clone()
        else:
            adv = cas.run_attack(choice.attack, model, x, y, progress=progress, **choice.library_kwargs())
        seconds = time.perf_counter() - start
        probs, modules = _views(model, x, adv.float())
    return LabResult(x[0].numpy(), adv[0].float().numpy(), int(y[0]), known, choice, probs, modules, seconds)


def first_view_index(model, x_all: np.ndarray, y_all: np.ndarray, choice: AttackChoice = AttackChoice(),
                     candidates: int = 32, min_confidence: float = 0.6) -> int | None:
    """Test-set index of the first image, in the fixed shuffle, that ``model`` classifies correctly
    with at least ``min_confidence`` and that ``choice`` (by default the Attack Lab's PGD) fools, so
    that a first visit shows an attack that works. One batched attack screens ``candidates`` images;
    the pick is confirmed with :func:`analyse`, exactly as the page will run it. None if none qualifies."""
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
        if analyse(model, x_all[i], choice, int(y_all[i])).success:
            return int(i)
    return None


# -- channel summaries and tables --------------------------------------------------------------------

def channel_order(view: ModuleView, sort: str) -> np.ndarray:
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
    """Summary figures of one image's channel values (K,): ``total`` (sum of |activation|), ``active``
    (channels above ``threshold`` x the largest one), ``share`` (the same as a fraction) and
    ``uniformity`` (how evenly |activation| is spread over the channels: 1 = all equal, 0 = one
    channel carries everything; the normalised entropy of cas.analysis)."""
    v = torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(1, -1)
    s = analysis.summary(v, threshold)
    active = int(analysis.activated(v, threshold).sum())
    return {"total": s["total_magnitude"], "active": active, "share": s["active_share"],
            "uniformity": analysis.uniformity(v.abs()[0])}


def channel_table(result: LabResult, model_label: str = "") -> pd.DataFrame:
    """Every channel value of every CAS point as one table (for the CSV download)."""
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


def choice_from_dict(d: dict) -> AttackChoice:
    """An AttackChoice from a dict with some of its fields (others keep their defaults)."""
    fields = asdict(AttackChoice())
    return replace(AttackChoice(), **{k: v for k, v in d.items() if k in fields})
