"""Indicators of attack failure (after Pintor et al., NeurIPS 2022) plus AutoAttack-style flags.

``diagnose(model, x, y, attack)`` runs one attack on images ``x`` (floats in [0, 1]) once, watching
every point it queries, then runs a few cheap extra checks, and returns one :class:`Indicator` per
check: a measured value, a verdict (``fired``: True, False, or None when the check could not run)
and one plain sentence. ``to_markdown`` / ``to_text`` format them; ``as_dicts`` gives plain data.

The checks (``ALL``, in this order):

``silent_success``
    An adversarial point was visited during the attack but not returned. The attack runs on a
    wrapper of the model that passes every call through unchanged and judges every queried row
    with the real model (argmax masks, fp32): rows come from ``model(x)``, ``model.forward_aux``
    or ``model.forward_details``, whichever the attack uses. A queried row is mapped to the image it
    belongs to by nearest original image (L2, confirmed within the budget in Linf), so attacks may
    query subsets and any order. Only valid points count: inside [0, 1] and within the budget.
``incomplete``
    The optimisation was still improving at the end: for each image the attack failed on, the
    best real-model margin over the queries so far; it fires when, on enough of those images, the
    last 20% of the queries still added more than 10% of the image's total gain (a free by-product
    of the watched run; it needs at least 4 queries per image).
``unbounded``
    With an unbounded budget (Linf eps = 1, the whole image range, the automatic step size), the
    same attack still fails on some image: a broken gradient path or a non-converging attack.
    Run on the first ``subsets["unbounded"]`` (20) images the attack failed on.
``zero_gradients``
    Input gradients of the real model's loss (cross-entropy + margin of the final logits) are zero
    or not finite, at the clean images and at the returned points (all images, one backward each).
``unstable``
    The loss changes a lot under tiny random noise: 8 uniform draws of Linf radius 1/2040 (an
    eighth of a grey level) around each returned point; an image is unstable when the
    cross-entropy moves by more than 10% of (its value + 0.1). First ``subsets["unstable"]`` (64)
    images.
``transfer``
    Adversarial examples made on ``surrogate`` (the same attack; a CAS-only attack becomes its
    fallback on a surrogate without CAS) fool the model where the white-box attack failed. Run on
    every image the attack failed on; needs ``surrogate``.
``square``
    AutoAttack's flag: the gradient-free Square attack (``subsets["square_queries"]``, 1,000
    queries) breaks images the attack failed on; first ``subsets["square"]`` (32) failed images.
``nondeterministic``
    AutoAttack's flag: the same input twice gives different logits (first 16 images).

``CHEAP`` names the checks that run no second attack (all but ``unbounded``, ``transfer`` and
``square``): their cost is close to the attack's own.

Cost: the watched run is the attack itself plus one real-model forward per queried row whose
forward was not the real model's (soft-mask queries), unless the attack's next call is the real
model on exactly those rows (as the library's PGD loop does to keep its best point); the extra checks
run on the subsets above. Each indicator records its seconds. Measured on 200 test images of the
bundled ``at-cas`` (one CPU thread): ``CHEAP`` took 1.5x the evaluator's own run of the attack
(soft-mask PGD-20 and the authors' PGD-20 alike); ``ALL`` took 4x (authors' PGD-20) to 10x
(soft-mask PGD-20, which stops early on most images), four fifths of it Square's 1,000 queries,
still far below the evaluator's default set of attacks, which runs AutoAttack on the same images.
Pass one ``cache`` dict to the calls for the attacks of one model to run Square once per image.
The thresholds are in ``THRESHOLDS``.

The model is never changed: no mode switch, no hooks, no writes. Call ``model.eval()`` first.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from .attacks import ATTACKS, AttackSettings, margin, run_attack

ALL = ("silent_success", "incomplete", "unbounded", "zero_gradients", "unstable", "transfer", "square",
       "nondeterministic")
# the checks that cost little beyond the watched run itself (no second attack): for every attack of an evaluation
CHEAP = ("silent_success", "incomplete", "zero_gradients", "unstable", "nondeterministic")
NAMES = {
    "silent_success": "Silent success",
    "incomplete": "Incomplete optimisation",
    "unbounded": "Unbounded attack fails",
    "zero_gradients": "Unavailable gradients",
    "unstable": "Unstable predictions",
    "transfer": "Transfer beats white-box",
    "square": "Square beats white-box",
    "nondeterministic": "Non-deterministic forward",
}
DEFAULT_SUBSETS = {"unbounded": 20, "unstable": 64, "square": 32, "square_queries": 1000, "deterministic": 16}
THRESHOLDS = {
    "late_share": 0.2,  # incomplete: the last 20% of an image's queries ...
    "late_gain": 0.1,  # ... adding more than 10% of its total margin gain
    "incomplete_fraction": 0.05,  # ... on at least 5% of the failed images (and at least one)
    "noise_radius": 1 / 2040,  # unstable: Linf radius of the noise
    "noise_draws": 8,
    "loss_change": 0.1,  # unstable: |change of CE| > 10% of (CE + 0.1) ...
    "unstable_fraction": 0.02,  # ... on at least 2% of the checked images (and at least one)
    "logit_tolerance": 1e-5,  # nondeterministic: largest logit difference tolerated (relative)
}
_TOL = 1e-5  # budget and range tolerance of a queried point (float rounding)
# bf16 logits are off by far less than this (logit units): a row whose bf16 margin is further below zero
# is certainly not adversarial; the others are judged again in fp32
JUDGE_TOLERANCE = 0.5


@dataclass
class Indicator:
    key: str
    name: str
    fired: bool | None  # None: not run (not applicable, or nothing to check)
    value: float | None  # the measured quantity, in ``unit``
    unit: str
    sentence: str
    images: int = 0  # images the check looked at
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "FIRED", False: "ok", None: "not run"}[self.fired]


# -- resolving the attack ------------------------------------------------------------------------------

def _resolve_attack(attack, model):
    """(label, fn, preset, registry name or None) of ``attack``: a registry name, a protocol name or a
    function with the attack calling convention."""
    if callable(attack):
        return getattr(attack, "__name__", "attack"), attack, {}, None
    if attack in ATTACKS:
        spec = ATTACKS[attack].for_model(model)
        return spec.name, spec.fn, dict(spec.preset), spec.name
    raise ValueError(f"unknown attack {attack!r}; available: {', '.join(ATTACKS)}")


def _run(fn, model, x, y, s, progress=None, **kw):
    return fn(model, x, y, s, progress=progress, **kw)


def _surrogate_fn(name, fn, surrogate):
    if name is None:
        return fn
    return ATTACKS[name].for_model(surrogate).fn


# -- watching an attack's queries ----------------------------------------------------------------------

_FORWARD_ARGS = ("y", "mask", "return_aux", "temperature")


class QueryRecorder:
    """Passes every call through to ``model`` unchanged and judges each queried row with the real
    model: ``visited[i]`` is True once a valid adversarial point of image ``i`` was queried;
    ``trace`` lists, per call, (image indices, real-model margins) of the valid mapped rows."""

    def __init__(self, model, x0: torch.Tensor, y: torch.Tensor, eps: float):
        object.__setattr__(self, "_model", model)
        self.x0 = x0.detach()
        self.flat0 = self.x0.flatten(1)
        self.y = y
        self.eps = float(eps)
        self.visited = torch.zeros(len(y), dtype=torch.bool, device=x0.device)
        self.trace: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows = 0
        self.unmapped = 0
        self.extra_forwards = 0
        self._pending: torch.Tensor | None = None  # a non-real query waiting to be judged

    def __getattr__(self, name):  # attributes the attack reads (num_classes, has_cas, ...)
        return getattr(object.__getattribute__(self, "_model"), name)

    # the three forwards of a CASNet, and plain modules' model(x)
    def __call__(self, x, *args, **kw):
        out = self._model(x, *args, **kw)
        opts = dict(zip(_FORWARD_ARGS, args)) | kw
        real = self._is_real(opts.get("y"), opts.get("mask", "pred"))
        self._observe(x, (out[0] if opts.get("return_aux") else out) if real else None)
        return out

    forward = __call__

    def forward_aux(self, x, *args, **kw):
        out = self._model.forward_aux(x, *args, **kw)
        opts = dict(zip(("y", "mask", "temperature"), args)) | kw
        self._observe(x, out[0] if self._is_real(opts.get("y"), opts.get("mask", "pred")) else None)
        return out

    def forward_details(self, x, *args, **kw):
        out = self._model.forward_details(x, *args, **kw)
        opts = dict(zip(("y", "mask", "temperature"), args)) | kw
        self._observe(x, out.logits if self._is_real(opts.get("y"), opts.get("mask", "pred")) else None)
        return out

    def _is_real(self, y, mask) -> bool:
        return mask == "pred" and (y is None or not getattr(self._model, "training", False))

    def _map(self, q: torch.Tensor):
        """(image index, within budget) of each queried row."""
        n = self.x0.shape[0]
        if q.shape[0] == n:
            d = (q - self.x0).abs().flatten(1).amax(1)
            if bool((d <= self.eps + _TOL).all()):
                return torch.arange(n, device=q.device), torch.ones(n, dtype=torch.bool, device=q.device)
        qf = q.flatten(1)
        idx = torch.cdist(qf, self.flat0).argmin(1)
        linf = (qf - self.flat0[idx]).abs().amax(1)
        ok = linf <= self.eps + _TOL
        for r in (~ok).nonzero().flatten().tolist():  # nearest in L2 is not within the Linf budget: search all
            d = (qf[r] - self.flat0).abs().amax(1)
            j = int(d.argmin())
            if d[j] <= self.eps + _TOL:
                idx[r], ok[r] = j, True
        return idx, ok

    def _observe(self, x, logits):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1:] != self.x0.shape[1:]:
            return
        with torch.no_grad():
            q = x.detach().float()
            pending, self._pending = self.__dict__.get("_pending"), None
            if pending is not None and not (logits is not None and pending.shape == q.shape
                                            and torch.equal(pending, q)):
                self._judge(pending, None)  # not judged by the real model right after: judge it here
            if logits is None:  # a forward other than the real model's: judged when the next call comes
                self._pending = q.clone()
                return
            self._judge(q, logits)

    def flush(self):
        """Judge the last query if it is still waiting (call once the attack has returned)."""
        pending, self._pending = self.__dict__.get("_pending"), None
        if pending is not None:
            with torch.no_grad():
                self._judge(pending, None)

    def _judge(self, q, logits):
        with torch.no_grad():
            self.rows += q.shape[0]
            idx, ok = self._map(q)
            ok &= (q.flatten(1).amin(1) >= -_TOL) & (q.flatten(1).amax(1) <= 1 + _TOL)
            self.unmapped += int((~ok).sum())
            if not bool(ok.any()):
                return
            idx, q = idx[ok], q[ok]
            if logits is None:
                with torch.autocast(q.device.type, enabled=False):
                    m = margin(self._model(q).float(), self.y[idx])
                self.extra_forwards += len(idx)
            else:
                m = margin(logits.detach()[ok].float(), self.y[idx])
                if logits.dtype != torch.float32:  # bf16: rows near or past the boundary are judged in fp32
                    near = m > -JUDGE_TOLERANCE
                    if near.any():
                        with torch.autocast(q.device.type, enabled=False):
                            m[near] = margin(self._model(q[near]).float(), self.y[idx[near]])
                        self.extra_forwards += int(near.sum())
            self.visited[idx[m > 0]] = True
            self.trace.append((idx.cpu(), m.cpu()))


def _per_image_traces(trace, n):
    seqs: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for idx, m in trace:
        for i, v in zip(idx.tolist(), m):
            seqs[i].append(v)
    return [torch.stack(s) if s else torch.empty(0) for s in seqs]


# -- helpers ---------------------------------------------------------------------------------------------

def _fooled(model, x, y) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return model(x).float().argmax(1) != y


def _count(mask) -> int:
    return int(mask.sum())


def _pct(k, n):
    return round(100 * k / n, 2) if n else 0.0


def _first(mask: torch.Tensor, k: int) -> torch.Tensor:
    return mask.nonzero().flatten()[:k]


# -- the checks --------------------------------------------------------------------------------------------

def _silent(rec, fooled_ret, n):
    silent = rec.visited & ~fooled_ret
    k = _count(silent)
    fired = k > 0
    sentence = (f"On {k} image(s) the attack queried a point that fools the model but returned one that does "
                f"not: report the best visited point." if fired else
                "Every adversarial point the attack visited was also returned.")
    return Indicator("silent_success", NAMES["silent_success"], fired, _pct(k, n), "% of images", sentence, n,
                     details={"images": silent.nonzero().flatten().tolist(), "queried_rows": rec.rows,
                              "rows_not_mapped_or_invalid": rec.unmapped,
                              "extra_forwards": rec.extra_forwards})


def _incomplete(rec, fooled_ret, n):
    seqs = _per_image_traces(rec.trace, n)
    failed = (~fooled_ret).nonzero().flatten().tolist()
    checked = still = 0
    late = []
    for i in failed:
        s = seqs[i]
        if len(s) < 4:
            continue
        checked += 1
        best = torch.cummax(s, 0).values
        k = max(1, math.floor((1 - THRESHOLDS["late_share"]) * len(s)))
        total, gain = float(best[-1] - s[0]), float(best[-1] - best[k - 1])
        if gain > max(THRESHOLDS["late_gain"] * total, 1e-4):
            still += 1
            late.append(i)
    if not checked:
        why = "the attack succeeded on every image" if not failed else "too few queries per image to see a trend"
        return Indicator("incomplete", NAMES["incomplete"], None, None, "% of failed images",
                         f"Not checked: {why}.", 0)
    fired = still >= max(1, THRESHOLDS["incomplete_fraction"] * checked)
    share = round(100 * THRESHOLDS["late_share"])
    sentence = (f"On {still} of {checked} images it failed on, the attack was still improving in its last "
                f"{share}% of queries: give it more steps." if fired else
                f"The attack had stopped improving on the images it failed on ({still} of {checked} still "
                f"improving in the last {share}% of queries).")
    return Indicator("incomplete", NAMES["incomplete"], fired, _pct(still, checked), "% of failed images",
                     sentence, checked, details={"images": late})


def _unbounded(fn, model, x, y, s, fooled_ret, k):
    idx = _first(~fooled_ret, k)
    if not len(idx):
        return Indicator("unbounded", NAMES["unbounded"], None, None, "% of checked images",
                         "Not checked: the attack succeeded on every image.", 0)
    big = replace(s, eps=1.0, step_size=None, until_fooled=True)
    xa = _run(fn, model, x[idx], y[idx], big)
    robust = ~_fooled(model, xa, y[idx])
    r = _count(robust)
    fired = r > 0
    sentence = (f"Even with an unbounded budget the attack leaves {r} of {len(idx)} images correctly "
                f"classified: its gradient does not lead it anywhere (masked gradients or a broken loss)."
                if fired else f"With an unbounded budget the attack breaks all {len(idx)} images it had failed on.")
    return Indicator("unbounded", NAMES["unbounded"], fired, _pct(r, len(idx)), "% of checked images",
                     sentence, len(idx), details={"images": idx[robust].tolist()})


def _input_gradients(model, x, y):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, reduction="sum") + margin(logits, y).sum()
        (g,) = torch.autograd.grad(loss, x)
    g = g.flatten(1)
    finite = torch.isfinite(g).all(1)
    zero = g.abs().amax(1) == 0
    return zero | ~finite, ~finite


def _zero_gradients(model, x, y, x_adv, cache=None):
    key = ("clean_gradients", len(y))  # the clean images' check is the same for every attack: once per model
    if cache is not None and key in cache:
        bad_clean, nonfinite_clean = cache[key]
    else:
        bad_clean, nonfinite_clean = _input_gradients(model, x, y)
        if cache is not None:
            cache[key] = (bad_clean, nonfinite_clean)
    bad_adv, nonfinite_adv = _input_gradients(model, x_adv, y)
    bad = bad_clean | bad_adv
    n = len(y)
    k = _count(bad)
    fired = k > 0
    nonfinite = _count(nonfinite_clean | nonfinite_adv)
    sentence = (f"The input gradient is zero or not finite on {k} of {n} images ({nonfinite} not finite): "
                f"gradient attacks cannot work there; use a gradient-free or adaptive attack."
                if fired else "Input gradients are non-zero and finite on every image, clean and attacked.")
    return Indicator("zero_gradients", NAMES["zero_gradients"], fired, _pct(k, n), "% of images", sentence, n,
                     details={"images": bad.nonzero().flatten().tolist(), "not_finite": nonfinite})


def _unstable(model, x_adv, y, k, seed):
    idx = torch.arange(min(k, len(y)), device=y.device)
    xa, ya = x_adv[idx], y[idx]
    gen = torch.Generator(device=xa.device).manual_seed(seed)
    r = THRESHOLDS["noise_radius"]
    with torch.no_grad(), torch.autocast(xa.device.type, enabled=False):
        base = F.cross_entropy(model(xa).float(), ya, reduction="none")
        change = torch.zeros_like(base)
        for _ in range(THRESHOLDS["noise_draws"]):
            noise = (torch.rand(xa.shape, generator=gen, device=xa.device) * 2 - 1) * r
            loss = F.cross_entropy(model((xa + noise).clamp(0, 1)).float(), ya, reduction="none")
            change = torch.maximum(change, (loss - base).abs())
    rel = change / (base.abs() + 0.1)
    bad = rel > THRESHOLDS["loss_change"]
    n, c = len(idx), _count(bad)
    fired = c >= max(1, THRESHOLDS["unstable_fraction"] * n)
    sentence = (f"On {c} of {n} attacked images the loss moves by more than "
                f"{round(100 * THRESHOLDS['loss_change'])}% under noise far below one grey level: the model's "
                f"output is unstable, and gradients there say little." if fired else
                f"The loss is stable under tiny noise (largest relative change {float(rel.max()):.3g}).")
    return Indicator("unstable", NAMES["unstable"], fired, _pct(c, n), "% of checked images", sentence, n,
                     details={"images": idx[bad].tolist(), "largest_relative_change": round(float(rel.max()), 4),
                              "median_relative_change": round(float(rel.median()), 5)})


def _transfer(sfn, model, surrogate, x, y, s, fooled_ret):
    if surrogate is None:
        return Indicator("transfer", NAMES["transfer"], None, None, "% of failed images",
                         "Not checked: no surrogate model given.", 0)
    idx = (~fooled_ret).nonzero().flatten()
    if not len(idx):
        return Indicator("transfer", NAMES["transfer"], None, None, "% of failed images",
                         "Not checked: the attack succeeded on every image.", 0)
    xs = _run(sfn, surrogate, x[idx], y[idx], replace(s, until_fooled=False))
    hit = _fooled(model, xs, y[idx])
    k = _count(hit)
    fired = k > 0
    sentence = (f"Adversarial examples made on the surrogate fool the model on {k} of the {len(idx)} images the "
                f"white-box attack failed on: the white-box attack is not finding what exists." if fired else
                f"Transferred examples from the surrogate break none of the {len(idx)} images the white-box "
                f"attack failed on.")
    return Indicator("transfer", NAMES["transfer"], fired, _pct(k, len(idx)), "% of failed images", sentence,
                     len(idx), details={"images": idx[hit].tolist()})


def _square(model, x, y, s, fooled_ret, k, queries, is_square, cache):
    if is_square:
        return Indicator("square", NAMES["square"], None, None, "% of checked images",
                         "Not checked: the attack is Square itself.", 0)
    idx = _first(~fooled_ret, k)
    if not len(idx):
        return Indicator("square", NAMES["square"], None, None, "% of checked images",
                         "Not checked: the attack succeeded on every image.", 0)
    eps = float(s.eps) if not isinstance(s.eps, torch.Tensor) else float(s.eps.min())
    known = cache.setdefault(("square", eps, queries, s.seed), {}) if cache is not None else {}
    todo = [i for i in idx.tolist() if i not in known]
    if todo:
        t = torch.tensor(todo, device=x.device)
        xs = run_attack("square", model, x[t], y[t], AttackSettings(eps=eps, queries=queries, seed=s.seed,
                                                                     amp=False))
        known.update(zip(todo, _fooled(model, xs, y[t]).tolist()))
    hit = torch.tensor([known[i] for i in idx.tolist()], dtype=torch.bool, device=x.device)
    c = _count(hit)
    fired = c > 0
    sentence = (f"The gradient-free Square attack ({queries} queries) breaks {c} of {len(idx)} images the attack "
                f"failed on: the gradients are misleading it." if fired else
                f"Square ({queries} queries) breaks none of the {len(idx)} images the attack failed on.")
    return Indicator("square", NAMES["square"], fired, _pct(c, len(idx)), "% of checked images", sentence,
                     len(idx), details={"images": idx[hit].tolist(), "queries": queries})


def _deterministic(model, x, k, cache=None):
    key = ("nondeterministic", min(k, len(x)))  # a property of the model and images, not of the attack
    if cache is not None and key in cache:
        return replace(cache[key], details=dict(cache[key].details))
    ind = _deterministic_check(model, x, k)
    if cache is not None:
        cache[key] = replace(ind, details=dict(ind.details))
    return ind


def _deterministic_check(model, x, k):
    xs = x[:k]
    with torch.no_grad(), torch.autocast(xs.device.type, enabled=False):
        a, b = model(xs).float(), model(xs).float()
    diff = float((a - b).abs().max())
    scale = float(a.abs().max()) or 1.0
    fired = not math.isfinite(diff) or diff > THRESHOLDS["logit_tolerance"] * max(1.0, scale)
    sentence = (f"The same images twice give logits that differ by up to {diff:.3g}: the model is random at test "
                f"time, so single-run attacks and accuracies are not reliable (use expectations over the "
                f"randomness)." if fired else "The same images twice give the same logits.")
    return Indicator("nondeterministic", NAMES["nondeterministic"], fired, diff, "largest logit difference",
                     sentence, len(xs))


# -- the entry point -----------------------------------------------------------------------------------

def diagnose(model, x: torch.Tensor, y: torch.Tensor, attack: str | Callable = "pgd",
             settings: AttackSettings | None = None, surrogate=None, indicators=ALL,
             subsets: dict | None = None, seed: int = 0,
             progress: Callable[[str], None] | None = None, cache: dict | None = None,
             attack_kwargs: dict | None = None, returned: dict | None = None) -> list[Indicator]:
    """Run ``attack`` (a registry name such as ``"pgd"``, ``"joint_pgd"``, ``"authors_pgd"``, or a
    function ``fn(model, x, y, settings, progress=None)``) on images ``x`` (float in [0, 1]) with
    labels ``y``, watched, and return the indicators named in ``indicators`` (see the module text),
    in the order of ``ALL``. ``settings``: the attack's settings (default: its evaluation preset with
    ``until_fooled``, exactly the evaluator's run, so its accuracy is the evaluation's; the authors'
    schedule for the protocol attacks, which always run to the end). ``surrogate``: a model to transfer from (for a CAS
    model, the baseline of the same training method). ``subsets`` overrides ``DEFAULT_SUBSETS``.
    ``progress(key)`` is called before each check. ``cache``: a dict to share between calls on the *same
    model and images* (e.g. one per model in an evaluation of several attacks): Square's verdict on an
    image is then computed once, whichever attack failed on it, and so are the clean images' gradient
    check and the determinism check. ``attack_kwargs``: extra keywords of the
    watched run (AutoAttack's ``version``). ``returned``: a dict that receives the watched run's points
    (``"x_adv"``), which are exactly what the attack returns unwatched, so an evaluation can count them."""
    unknown = [k for k in indicators if k not in ALL]
    if unknown:
        raise ValueError(f"unknown indicator(s) {', '.join(map(str, unknown))}; choose from {', '.join(ALL)}")
    sub = {**DEFAULT_SUBSETS, **(subsets or {})}
    label, fn, preset, name = _resolve_attack(attack, model)
    s = (settings or AttackSettings(**{"until_fooled": True, **preset})).validated()
    x, y = x.detach(), y.to(x.device)
    n = len(y)
    want = set(indicators)
    out: dict[str, Indicator] = {}

    def timed(key, f, *a):
        if progress:
            progress(key)
        t0 = time.time()
        ind = f(*a)
        ind.seconds = round(time.time() - t0, 2)
        ind.details.setdefault("attack", label)
        out[key] = ind

    t0 = time.time()
    eps = float(s.eps.max()) if isinstance(s.eps, torch.Tensor) else float(s.eps)
    rec = QueryRecorder(model, x, y, eps)
    x_adv = _run(fn, rec, x, y, s, **(attack_kwargs or {}))
    rec.flush()
    if returned is not None:
        returned["x_adv"] = x_adv
    fooled_ret = _fooled(model, x_adv, y)
    attack_seconds = round(time.time() - t0, 2)
    if "silent_success" in want:
        timed("silent_success", _silent, rec, fooled_ret, n)
        out["silent_success"].seconds = attack_seconds
    if "incomplete" in want:
        timed("incomplete", _incomplete, rec, fooled_ret, n)
    if "unbounded" in want:
        timed("unbounded", _unbounded, fn, model, x, y, s, fooled_ret, sub["unbounded"])
    if "zero_gradients" in want:
        timed("zero_gradients", _zero_gradients, model, x, y, x_adv, cache)
    if "unstable" in want:
        timed("unstable", _unstable, model, x_adv, y, sub["unstable"], seed)
    if "transfer" in want:
        timed("transfer", _transfer, _surrogate_fn(name, fn, surrogate) if surrogate is not None else None,
              model, surrogate, x, y, s, fooled_ret)
    if "square" in want:
        timed("square", _square, model, x, y, s, fooled_ret, sub["square"], sub["square_queries"],
              name == "square", cache)
    if "nondeterministic" in want:
        timed("nondeterministic", _deterministic, model, x, sub["deterministic"], cache)
    for ind in out.values():
        ind.details.setdefault("robust_accuracy", _pct(n - _count(fooled_ret), n))
    return [out[k] for k in ALL if k in out]


# -- formatting -------------------------------------------------------------------------------------------

def as_dicts(indicators: list[Indicator]) -> list[dict]:
    """Plain data (JSON-ready) for each indicator."""
    return [{**asdict(i), "verdict": i.verdict} for i in indicators]


def fired(indicators: list[Indicator]) -> list[str]:
    return [i.key for i in indicators if i.fired]


def _value(i: Indicator) -> str:
    if i.value is None:
        return "-"
    return f"{i.value:.3g} ({i.unit})" if i.key == "nondeterministic" else f"{i.value:g}{i.unit[0]} {i.unit[2:]}" \
        if i.unit.startswith("% ") else f"{i.value:g} {i.unit}"


def to_markdown(indicators: list[Indicator], title: str | None = None) -> str:
    """A markdown table: indicator, verdict, measured value, images checked, seconds, sentence."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| indicator | verdict | value | images | s | what it means |", "|---|---|---|---|---|---|"]
    for i in indicators:
        verdict = f"**{i.verdict}**" if i.fired else i.verdict
        lines.append(f"| {i.name} | {verdict} | {_value(i)} | {i.images} | {i.seconds:g} | {i.sentence} |")
    return "\n".join(lines) + "\n"


def to_text(indicators: list[Indicator], title: str | None = None) -> str:
    """One line per indicator, for a terminal."""
    lines = [title] if title else []
    for i in indicators:
        lines.append(f"  [{i.verdict:>7}] {i.name:<26} {_value(i):<28} {i.sentence}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """``python -m cas.diagnose MODEL [--attack pgd] [--n 200] [--surrogate at] [--markdown]``."""
    import argparse
    import json

    from . import data, load_model
    from .cli import HelpFormatter

    ap = argparse.ArgumentParser(prog="python -m cas.diagnose", formatter_class=HelpFormatter,
                                 description="Indicators of attack failure for one model and attack, on the "
                                             "first N images of the fixed test subset.")
    ap.add_argument("model", help="a bundled model name (at-cas) or a checkpoint path")
    ap.add_argument("--attack", default="pgd", help=f"one of {', '.join(ATTACKS)}")
    ap.add_argument("--n", type=int, default=200, help="images")
    ap.add_argument("--surrogate", default=None, help="model to transfer from (e.g. at for at-cas)")
    ap.add_argument("--indicators", default=",".join(ALL), help="comma-separated")
    ap.add_argument("--markdown", action="store_true", help="a markdown table instead of text")
    ap.add_argument("--json", default=None, help="also write the indicators as JSON to this file")
    a = ap.parse_args(argv)
    model = load_model(a.model)
    surrogate = load_model(a.surrogate) if a.surrogate else None
    x8, y = data.test_subset(a.n)
    res = diagnose(model, x8.float() / 255, y, a.attack, surrogate=surrogate,
                   indicators=tuple(k for k in a.indicators.split(",") if k))
    title = f"{a.model}, {a.attack}, {a.n} images"
    print(to_markdown(res, title) if a.markdown else to_text(res, title))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(as_dicts(res), f, indent=1)


if __name__ == "__main__":
    main()


__all__ = [
    "ALL",
    "CHEAP",
    "DEFAULT_SUBSETS",
    "NAMES",
    "THRESHOLDS",
    "Indicator",
    "QueryRecorder",
    "as_dicts",
    "diagnose",
    "fired",
    "main",
    "to_markdown",
    "to_text",
]
