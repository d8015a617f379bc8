"""Robust accuracy: how many images a model still classifies correctly clean and under each attack.

:func:`evaluate` runs a whole evaluation as :class:`EvalConfig` describes it (which attacks, the
budget, batch size, seeds, precision) and returns an :class:`EvalResult`: accuracy per card key,
the number of images each figure rests on, its standard error, the per-image worst case (an image
counts as robust only if it is classified correctly clean and under every attack run) and the
sanity flags. :func:`accuracy_vs_eps` and :func:`measure_curves` trace accuracy against the budget.
``python -m cas.evaluate`` is the command line on top (:mod:`cas.evaluate`).

Image i of the evaluated set is attacked with seed ``seed + i`` (each image from its own generator),
and the batches are a fixed function of the configuration, so under ``torch.distributed`` every process
attacks every world-size-th batch exactly as one process would, and the gathered verdicts are the
single process's. ``evaluate(..., out=FOLDER)`` writes each attack's per-image verdicts there as it
finishes (:class:`PartialResults`) and reads back those that match, so a stopped evaluation resumes.
With ``EvalConfig.diagnose``, the indicators of :mod:`cas.diagnose` are checked on each attack's first
images, and those images' verdicts come from the watched run.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from .attacks import ATTACKS, AttackSettings, run_attack
from .attacks.protocols import PROTOCOLS

DEFAULT_ATTACKS = ("fgsm", "pgd", "cw", "authors_pgd", "authors_cw", *PROTOCOLS, "joint_pgd", "soft_mask_pgd",
                   "autoattack", "adaptive_autoattack")  # a relative's own protocol runs on that relative only
EVALUATED = [name for name, spec in ATTACKS.items() if spec.card_key]  # attacks with an evaluation preset
ADAPTIVE_PGD = ("joint_pgd20", "soft_mask_pgd20")  # the CAS-adaptive PGD figures; their minimum: adaptive_pgd20
# card key -> column header, in table order: clean, every attack with a card key, then the derived figures
COLUMNS = {"clean": "clean", **{s.card_key: s.column for s in ATTACKS.values() if s.card_key},
           "adaptive_pgd20": "adaptive PGD-20 (lower)", "worst_case": "worst case"}
MASKING_GAP = 5.0  # points between plain and adaptive PGD that count as gradient masking
CURVE_ATTACKS = ("pgd", "soft_mask_pgd", "adaptive_autoattack")  # plain, adaptive PGD, adaptive AutoAttack


def column(key: str) -> str:
    """The column header of a card key ("pgd20" -> "PGD-20"); unknown keys with spaces for underscores."""
    return COLUMNS.get(key, key.replace("_", " "))


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation runs, besides the model and the images.

    ``attacks``: names from :data:`EVALUATED`, each run with its registry preset (attacks meant for CAS
    models are skipped for models without CAS). ``eps``: the Linf budget in input units. ``limits``
    caps the images of some attacks (``{"autoattack": 1000}``: the first 1,000); ``overrides``
    changes an attack's preset (``{"square": {"queries": 500}}``). ``seed``: image i of the evaluated
    set is attacked with seed ``seed + i`` (its own generator, so its random start does not depend on
    the batch or the process it lands in); attacks that take one seed per batch (AutoAttack, Square)
    get ``seed + i`` of the batch's first image. ``amp``: bf16 autocast for gradients where the
    hardware does bf16 natively (every accuracy is judged in fp32). ``until_fooled``: stop attacking
    an image once it is misclassified (the accuracy is the same, for less work). ``autoattack_version``:
    "standard" or "apgd" (its APGD-CE and APGD-T only, see :func:`cas.attacks.autoattack`).
    ``device``: None for CUDA when available, else the CPU. ``diagnose``: indicator names of
    :mod:`cas.diagnose` (e.g. its ``CHEAP`` set; empty: none) checked for each attack of
    ``diagnose_attacks`` (None: every attack run except AutoAttack, adaptive AutoAttack and Square) on
    its first ``diagnose_n`` images; those images' verdicts come from the watched run itself, which
    returns what the attack returns, so diagnosing adds only the checks' own cost."""

    attacks: Sequence[str] = DEFAULT_ATTACKS
    eps: float = 8 / 255
    batch_size: int = 500
    device: str | torch.device | None = None
    limits: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    overrides: dict[str, dict] = field(default_factory=dict)
    amp: bool = True
    until_fooled: bool = True
    autoattack_version: str = "standard"
    diagnose: Sequence[str] = ()
    diagnose_n: int = 200
    diagnose_attacks: Sequence[str] | None = None

    def checked(self) -> EvalConfig:
        """This configuration with ``attacks`` as a tuple; ValueError naming what is wrong."""
        check_batch(self.batch_size)
        unknown = [a for a in self.attacks if a not in ATTACKS or not ATTACKS[a].card_key]
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(map(str, unknown))}; choose from {', '.join(EVALUATED)}")
        limits = self.limits or {}
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in limits.values()):
            raise ValueError(f"limits must be positive whole numbers of images, got {limits}")
        if self.diagnose:
            from .diagnose import ALL as INDICATORS
            bad = [k for k in self.diagnose if k not in INDICATORS]
            if bad:
                raise ValueError(f"unknown indicator(s) {', '.join(bad)}; choose from {', '.join(INDICATORS)}")
            check_batch(self.diagnose_n)
        return replace(self, attacks=tuple(self.attacks), limits=dict(limits), overrides=dict(self.overrides or {}),
                       diagnose=tuple(self.diagnose or ()))

    def settings(self, attack: str, first_image: int, count: int | None = None) -> AttackSettings:
        """The settings ``attack`` runs with on the batch of ``count`` images that starts at image
        ``first_image`` (without ``count``: one seed, ``seed + first_image``, for the batch)."""
        seed = self.seed + first_image
        if count is not None and ATTACKS[attack].per_image_seeds:
            seed = tuple(range(seed, seed + count))
        return AttackSettings(**{"eps": self.eps, "seed": seed, "amp": self.amp,
                                 "until_fooled": self.until_fooled, **ATTACKS[attack].preset,
                                 **self.overrides.get(attack, {})})

    def batches(self, attack: str, m: int, diagnosed: bool = False) -> list[slice]:
        """The batches ``attack`` runs in on the first ``m`` images: the diagnosed images first (when
        ``diagnosed``), then ``batch_size`` at a time, both rounded to the attack's batch multiple.
        The same for every process of a sharded evaluation, so each batch is attacked identically."""
        mult = ATTACKS[attack].batch_multiple if attack in ATTACKS else 1
        bs = max(mult, self.batch_size // mult * mult)
        out, i = [], 0
        if diagnosed and m:
            i = min(m, max(mult, self.diagnose_n // mult * mult))
            out.append(slice(0, i))
        out += [slice(j, min(j + bs, m)) for j in range(i, m, bs)]
        return out

    def diagnosed(self, attack: str) -> bool:
        """Whether the indicators are checked for ``attack``."""
        if not self.diagnose or attack == "clean":
            return False
        chosen = self.diagnose_attacks
        return attack in chosen if chosen is not None else attack not in NOT_DIAGNOSED

    def fingerprint(self, attack: str, m: int) -> dict:
        """What a partial result of ``attack`` on ``m`` images depends on (besides model and images)."""
        settings = {} if attack == "clean" else {k: v for k, v in vars(self.settings(attack, 0)).items()
                                                  if k != "seed"}
        return {"attack": attack, "m": m, "seed": self.seed, "settings": repr(sorted(settings.items())),
                "batches": [(b.start, b.stop) for b in self.batches(attack, m, self.diagnosed(attack))],
                "autoattack_version": self.autoattack_version if attack == "autoattack" else None,
                "diagnose": list(self.diagnose) if self.diagnosed(attack) else []}

    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


NOT_DIAGNOSED = ("autoattack", "adaptive_autoattack", "square")  # library attacks: not watched by default


@dataclass
class EvalResult:
    """An evaluation's figures, each keyed by card key (see :data:`COLUMNS`). ``indicators``: attack
    name -> its attack-failure indicators (:func:`cas.diagnose.as_dicts`); ``verdicts``: card key ->
    per-image correctness (bool tensor over the images that attack saw)."""

    n: int
    accuracy: dict[str, float] = field(default_factory=dict)  # card key -> percent
    counts: dict[str, int] = field(default_factory=dict)  # card key -> images evaluated
    seconds: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)  # card key -> standard error, percent points
    flags: list[str] = field(default_factory=list)
    indicators: dict[str, list[dict]] = field(default_factory=dict)
    verdicts: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    resumed: list[str] = field(default_factory=list)  # attacks read back from a partial result


_CONFIG_FIELDS = {f.name for f in fields(EvalConfig)}


def evaluate(model, x_u8: torch.Tensor, y: torch.Tensor, config: EvalConfig | Sequence[str] | None = None,
             progress=None, *, out: str | Path | None = None, model_id: str | None = None,
             **options) -> EvalResult:
    """Accuracy (percent) clean and under each attack of ``config`` on uint8 images ``x_u8``
    (N, 3, 32, 32) with labels ``y``. ``progress(card_key, done, total)`` reports batches.

    The worst case is taken over the images every attack saw. For code written before
    :class:`EvalConfig`, ``config`` may also be a list of attack names, with the other fields as
    keyword ``options`` (``evaluate(model, x, y, ["pgd"], eps=4 / 255)``).

    Run under ``torch.distributed`` (``torchrun``), each process attacks every world-size-th batch and
    the per-image verdicts are gathered: every process returns what one process would. ``out``: a
    folder for partial results; each attack's per-image verdicts (and indicators) are written there
    atomically as soon as it finishes, and an attack whose partial result is there, for the same
    model (``model_id``, default: a hash of the weights), images and settings, is read back instead
    of run again."""
    config = _config(config, options).checked()
    device = config.torch_device()
    rank, world = _rank_world()
    has_cas = getattr(model, "has_cas", False)
    attacks = [a for a in config.attacks if ATTACKS[a].applies_to(model)]
    n = x_u8.shape[0]
    res = EvalResult(n=n)
    correct: dict[str, torch.Tensor] = {}
    partial = PartialResults(out, model_id or weights_id(model), x_u8, y) if out is not None else None
    cache: dict = {}
    for name in ["clean", *attacks]:
        key = "clean" if name == "clean" else ATTACKS[name].card_key
        m = min(n, config.limits.get(name, n))
        fp = config.fingerprint(name, m)
        saved = partial.load(name, fp) if partial is not None and rank == 0 else None
        if world > 1:
            box = [saved]
            torch.distributed.broadcast_object_list(box, src=0)
            saved = box[0]
        if saved is not None:
            verdict, seconds, inds = saved
            res.resumed.append(name)
        else:
            verdict, seconds, inds = _run_one(model, x_u8, y, config, name, key, m, device, rank, world,
                                              progress, cache)
            if partial is not None and rank == 0:
                partial.save(name, fp, verdict, seconds, inds)
        correct[key] = verdict
        res.seconds[key] = seconds
        res.accuracy[key] = percent(verdict)
        res.counts[key] = m
        if inds is not None:
            res.indicators[name] = inds
    res.verdicts = correct
    _add_derived_figures(res, correct, has_cas)
    return res


def _run_one(model, x_u8, y, config: EvalConfig, name, key, m, device, rank, world, progress, cache):
    """One attack's per-image verdicts on the first ``m`` images, its seconds (the slowest process)
    and its indicators (or None), gathered across the processes of a sharded evaluation."""
    diagnosed = config.diagnosed(name)
    batches = config.batches(name, m, diagnosed) if name != "clean" else config.batches("clean", m)
    verdict = torch.zeros(m, dtype=torch.int32)
    inds = None
    t0 = time.time()
    for b, sl in enumerate(batches):
        if b % world != rank:
            continue
        xb, yb = x_u8[sl].to(device).float() / 255, y[sl].to(device)
        if name != "clean":
            extra = {"version": config.autoattack_version} if name == "autoattack" else {}
            settings = config.settings(name, sl.start, sl.stop - sl.start)
            if diagnosed and b == 0:
                from .diagnose import as_dicts, diagnose
                got: dict = {}
                inds = as_dicts(diagnose(model, xb, yb, name, settings=settings, indicators=config.diagnose,
                                         cache=cache, attack_kwargs=extra, returned=got))
                xb = got["x_adv"]
            else:
                xb = run_attack(name, model, xb, yb, settings, **extra)
        with torch.no_grad():
            verdict[sl] = (model(xb).argmax(1) == yb).int().cpu()
        if progress:
            progress(key, sl.stop, m)
    seconds = time.time() - t0
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(verdict)  # each image was attacked by exactly one process
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = float(t)
        if diagnosed:
            box = [inds]
            dist.broadcast_object_list(box, src=0)  # the diagnosed batch is batch 0, on process 0
            inds = box[0]
    return verdict.bool(), round(seconds, 2), inds


def _rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def weights_id(model) -> str:
    """A short hash of a model's weights and buffers: what a partial result was measured on."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()[:16]


class PartialResults:
    """One JSON file per attack in ``folder``: the per-image verdicts, seconds and indicators of an
    attack that finished, with what they were measured on; written atomically
    (:func:`cas.checkpoint.atomic_write`), so a file is either whole or absent."""

    def __init__(self, folder, model_id: str, x_u8: torch.Tensor, y: torch.Tensor):
        self.folder = Path(folder)
        self.model_id = model_id
        h = hashlib.sha256(x_u8.contiguous().numpy().tobytes())
        h.update(y.to(torch.int64).contiguous().numpy().tobytes())
        self.images = h.hexdigest()[:16]

    def path(self, attack: str) -> Path:
        return self.folder / f"{attack}.json"

    def load(self, attack: str, fingerprint: dict):
        """(verdicts, seconds, indicators) of a finished attack, or None when absent or measured otherwise."""
        p = self.path(attack)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if d.get("model") != self.model_id or d.get("images") != self.images \
                or d.get("config") != json.loads(json.dumps(fingerprint)):
            return None
        bits = d.get("verdicts", "")
        if len(bits) != fingerprint["m"] or set(bits) - {"0", "1"}:
            return None
        return torch.tensor([c == "1" for c in bits], dtype=torch.bool), d.get("seconds", 0.0), d.get("indicators")

    def save(self, attack: str, fingerprint: dict, verdict: torch.Tensor, seconds: float, indicators) -> None:
        from .checkpoint import atomic_write
        self.folder.mkdir(parents=True, exist_ok=True)
        d = {"model": self.model_id, "images": self.images, "config": fingerprint, "seconds": seconds,
             "verdicts": "".join("1" if v else "0" for v in verdict.tolist()), "indicators": indicators}
        text = json.dumps(d, default=str)
        atomic_write(self.path(attack), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _config(config, options: dict) -> EvalConfig:
    """An :class:`EvalConfig` from the new calling style, or from a list of attacks plus keywords."""
    unknown = set(options) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(f"evaluate() got unexpected options {', '.join(sorted(unknown))}")
    if isinstance(config, EvalConfig):
        return replace(config, **options) if options else config
    if config is not None:
        options = {**options, "attacks": config}
    return EvalConfig(**options)


def _add_derived_figures(res: EvalResult, correct: dict[str, torch.Tensor], has_cas: bool) -> None:
    """adaptive_pgd20, the worst case, the standard errors and the sanity flags, from the per-image verdicts."""
    adaptive = [k for k in ADAPTIVE_PGD if k in res.accuracy]
    if adaptive:
        res.accuracy["adaptive_pgd20"] = min(res.accuracy[k] for k in adaptive)
    common = min(res.counts.values())
    worst = torch.ones(common, dtype=torch.bool)
    for key in correct:
        worst &= correct[key][:common]
    res.accuracy["worst_case"] = percent(worst)
    res.counts["worst_case"] = common
    if adaptive:
        res.counts["adaptive_pgd20"] = min(res.counts[k] for k in adaptive)
    res.stderr = {k: standard_error(v, res.counts.get(k, res.n)) for k, v in res.accuracy.items()}
    same_images = {k: percent(correct[k][:common]) for k in correct}
    res.flags = sanity_flags(res.accuracy, has_cas, same_images, common)


def percent(right: torch.Tensor) -> float:
    """The share of true verdicts, in percent, rounded to 2 decimals."""
    return round(100 * float(right.float().mean()), 2)


def accuracy_vs_eps(model, x_u8: torch.Tensor, y: torch.Tensor, attack: str, eps_values, steps: int = 10,
                    batch_size: int = 256, seed: int = 0, amp: bool = True, progress=None) -> list[float]:
    """Accuracy (percent) under ``attack`` at each budget of ``eps_values`` (in input units; 0 means
    clean), as one batched job: every image is paired with every non-zero budget and the pairs are
    attacked together, each with its own budget (step size: the library's automatic rule per budget).
    Gradient attacks only. ``progress(done, total)`` counts image-budget pairs."""
    if attack not in ATTACKS or not ATTACKS[attack].gradient:
        raise ValueError(f"accuracy_vs_eps needs a gradient attack, got {attack!r}")
    check_batch(batch_size)
    eps_values = [float(e) for e in eps_values]
    n = x_u8.shape[0]
    attacked = [e for e in eps_values if e > 0]
    x = x_u8.float() / 255
    xs, ys = x.repeat(len(attacked), 1, 1, 1), y.repeat(len(attacked))
    budgets = torch.tensor(attacked).repeat_interleave(n)
    correct = torch.zeros(len(ys), dtype=torch.bool)
    for i in range(0, len(ys), batch_size):
        sl = slice(i, i + batch_size)
        s = AttackSettings(eps=budgets[sl], steps=steps, seed=seed + i, amp=amp, until_fooled=True)
        xa = run_attack(attack, model, xs[sl], ys[sl], s)
        with torch.no_grad():
            correct[sl] = model(xa).argmax(1).cpu() == ys[sl]
        if progress:
            progress(min(i + batch_size, len(ys)), len(ys))
    with torch.no_grad():
        clean = 100 * float((model(x).argmax(1) == y).float().mean()) if n else 0.0
    per_eps = correct.view(len(attacked), n).float().mean(1).mul(100).tolist() if attacked else []
    it = iter(per_eps)
    return [round(clean if e == 0 else next(it), 2) for e in eps_values]


def measure_curves(model, x_u8, y, eps_values, amp: bool = True, progress=None) -> dict[str, list[float]]:
    """Accuracy (percent) at each budget of ``eps_values`` under plain PGD-20, soft-mask PGD-20 and
    adaptive AutoAttack (for a model without CAS: PGD-20 and AutoAttack's APGD-CE + APGD-T), keyed by
    the attack's label. ``progress(label)`` is told which curve starts."""
    curves = {}
    for name in CURVE_ATTACKS:
        spec = ATTACKS[name].for_model(model)
        label = spec.label.replace(" (mask-adaptive)", "") + ("-20" if spec.gradient else "")
        if label in curves:
            continue
        if progress:
            progress(label)
        if spec.gradient:
            curves[label] = accuracy_vs_eps(model, x_u8, y, spec.name, eps_values, steps=20, amp=amp)
            continue
        x = x_u8.float() / 255
        accs = []
        for e in eps_values:
            xa = x if e == 0 else run_attack(name, model, x, y, AttackSettings(eps=e, amp=amp))
            with torch.no_grad():
                accs.append(percent(model(xa).argmax(1) == y))
        curves[label] = accs
    return curves


def check_batch(batch_size) -> None:
    """Refuse a batch size that is not a whole number from 1 to 10,000."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
        raise ValueError(f"batch_size must be a whole number from 1 to 10000, got {batch_size!r}")


def standard_error(percent: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images, in percentage points."""
    p = percent / 100
    return round(100 * (p * (1 - p) / max(n, 1)) ** 0.5, 2)


def sanity_flags(acc: dict[str, float], has_cas: bool, same_images: dict[str, float] | None = None,
                 n_same: int | None = None) -> list[str]:
    """Plain-language warnings about numbers that cannot all be right. ``same_images`` (accuracies on
    the ``n_same`` images every attack saw) is what attacks are compared on when given, so that an attack
    run on fewer images is not compared with one run on more."""
    flags = []
    clean = acc.get("clean")
    for key, v in acc.items():
        if key != "clean" and clean is not None and v > clean + 1e-9:
            flags.append(f"{key} accuracy {v:.2f}% is ABOVE clean accuracy {clean:.2f}%: the attack is "
                         "failing to find adversarial examples (gradient masking?)")
    pair_acc = same_images or acc
    where = f" on the {n_same} images both saw" if same_images and n_same else ""
    ranked = [s for s in ATTACKS.values() if s.strength is not None and s.card_key in pair_acc]
    for weak in ranked:
        for strong in ranked:
            a, b = pair_acc[weak.card_key], pair_acc[strong.card_key]
            if weak.strength < strong.strength and b > a + 1.0:
                flags.append(f"the stronger attack {strong.card_key} ({b:.2f}%) leaves more images correct "
                             f"than the weaker {weak.card_key} ({a:.2f}%){where}")
    if has_cas and "pgd20" in acc and "adaptive_pgd20" in acc:
        gap = acc["pgd20"] - acc["adaptive_pgd20"]
        if gap > MASKING_GAP:
            flags.append(f"gradient masking: plain PGD-20 reports {acc['pgd20']:.2f}% but mask-adaptive PGD-20 "
                         f"{acc['adaptive_pgd20']:.2f}% ({gap:.1f} points lower). Plain PGD cannot see "
                         "how the mask is chosen; trust the adaptive number.")
    return flags
