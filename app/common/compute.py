"""Compute what a page shows: the one door through which every page gets its heavy results — one
image's attack and its channels (:func:`attack_image`), the channel statistics of a model on many
images (:func:`channel_statistics`), fresh evaluations (:func:`evaluation`) and accuracy-vs-ε curves
(:func:`eps_curve`).

Each function takes a plain, hashable request (a frozen dataclass naming the model by its key, which
identifies the exact weights, the image by its digest, and the attack and its settings) followed by
the objects it names (the loaded model, the pixels), and returns a plain result (numpy arrays,
dataclasses of numbers). The request is the result's key: the same request never computes twice.

Results are shared by every session of the server (:data:`SHARED`, :class:`app.common.sharing.SharedResults`):
a request is computed once, identical requests that arrive meanwhile wait for that computation, and a
class that opens the same lecture step computes it once. Each kind of result has its own store and
byte budget, so that many quick Attack Lab results never push out a Channel statistics run or a
Robustness evaluation that took minutes. Each session also keeps the results it has shown (a bounded
number, :data:`STORES`), so that changing a chart option never asks again. One-image attacks of many
sessions that wait at the same time run as one batch (:data:`ATTACK_QUEUE`), each image exactly as it
would run alone; a visitor who waits behind others is told how many and for about how long.

Progress is shown at the edge: a function given ``display`` calls ``display(text)`` when (and only
when) it starts computing, and gets back ``(update(fraction, text), close())``
(:func:`app.common.panels.progress_bar` is the pages' one).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import numpy as np
import streamlit as st

import cas
from cas import stats as cas_stats
from cas.evaluate import accuracy_vs_eps, evaluate
from cas.precision import all_cores, threads

from . import image_attack, images
from .image_attack import AttackChoice, LabResult
from .sharing import BatchQueue, SharedResults

Update = Callable[[float, str], None]
Display = Callable[[str], tuple[Update, Callable[[], None]]]

# store -> how many results it keeps (the least recently used go first; None: all, for the session).
STORES = {
    "lab": 64,           # Attack Lab, Compare and Lecture: one image's attack each, tens of kB
    "stats": 8,          # Channel statistics: one model on hundreds of images each
    "robustness": None,  # Robustness evaluations and curves: minutes of work each, small results
}
MB = 2**20
# store -> the server's shared results (bounded in bytes; a result is a few tens of kB for one image,
# a few MB for Channel statistics, a few kB for an evaluation)
SHARED = {"lab": SharedResults(256 * MB), "stats": SharedResults(256 * MB), "robustness": SharedResults(32 * MB)}
COUNTER = "_lab_computations"  # session-state key counting the results each session obtained (tests read it)


def store_key(store: str) -> str:
    """The session-state key holding ``store``'s results (``"_lab_results"`` for the Attack Lab's)."""
    return f"_{store}_results"


def cached(key, compute: Callable[[], object], store: str = "lab"):
    """Return the result of ``key`` from this session's ``store`` (one of :data:`STORES`), else from
    the server's shared one (:data:`SHARED`), computing it there on first use. ``key`` must say
    everything the result depends on. ``st.session_state[COUNTER]`` counts the results this session
    obtained (computed here or by another session)."""
    limit = STORES[store]
    results = st.session_state.setdefault(store_key(store), OrderedDict())
    if key in results:
        results.move_to_end(key)
        return results[key]
    value = SHARED[store].get(key, compute)
    st.session_state[COUNTER] = st.session_state.get(COUNTER, 0) + 1
    results[key] = value
    while limit is not None and len(results) > limit:
        results.popitem(last=False)
    return value


def _run(display: Display | None, text: str, work: Callable[[Update], object]):
    """``work(update)`` with a progress display opened on ``text`` (and closed after), or none."""
    if display is None:
        return work(lambda fraction, text: None)
    update, close = display(text)
    try:
        return work(update)
    finally:
        close()


# -- one image -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageRequest:
    """One image's attack: ``model`` (the model's key: its checkpoint and weights), ``image`` (the
    image's digest), its real class ``label`` (None: attack the model's own clean prediction), the
    attack ``choice``; ``crafted_on``: the key of the model whose adversarial image is applied instead
    of an attack (transfer), or None."""

    model: str
    image: str
    label: int | None
    choice: AttackChoice
    crafted_on: str | None = None


def image_request(model_key: str, x: np.ndarray, label: int | None, choice: AttackChoice,
                  crafted_on: str | None = None) -> ImageRequest:
    """The request for attacking image ``x`` (uint8 (3, 32, 32)) on the model with key ``model_key``."""
    return ImageRequest(model_key, images.digest(x), label, choice, crafted_on)


def attack_image(request: ImageRequest, model, x: np.ndarray, x_adv: np.ndarray | None = None,
                 title: str = "the image", display: Display | None = None) -> LabResult:
    """:func:`app.common.image_attack.attack_image` for ``request`` (``model`` and ``x`` are what it
    names; ``x_adv``: the transferred adversarial image when ``request.crafted_on`` is set). ``title``
    names the image in the progress text. Raises ``ValueError`` for settings the library refuses."""
    choice = request.choice
    choice.validate()  # a refused setting never reaches the queue or the stores
    text = f"{image_attack.attack_label(choice.attack)} on {title}"
    if x_adv is not None or choice.attack == image_attack.NONE:  # no attack: one cheap forward, here
        return cached(request, lambda: image_attack.attack_image(model, x, choice, request.label, x_adv=x_adv))
    return cached(request, lambda: _run(display, text, lambda update: _queued(request, model, x, text, update)))


@dataclass(frozen=True)
class _Queued:
    """One image's attack waiting in :data:`ATTACK_QUEUE`."""

    model: object
    x: np.ndarray
    label: int | None
    choice: AttackChoice


def _attack_batch(group, requests: list[_Queued]) -> list[LabResult]:
    first = requests[0]
    progress = _PROGRESS.setdefault(group, [0, 1])

    def report(done: int, total: int) -> None:
        progress[:] = [done, max(total, 1)]

    try:
        return image_attack.attack_images(first.model, [r.x for r in requests], first.choice,
                                          [r.label for r in requests], [r.choice.get("seed") for r in requests],
                                          progress=report)
    finally:
        _PROGRESS.pop(group, None)


ATTACK_QUEUE = BatchQueue(_attack_batch, max_batch=64, name="cas-attack-batches")
_PROGRESS: dict = {}  # group -> [done, total] of the batch running now (read by the waiting pages)
POLL_SECONDS = 0.1


def _group(request: ImageRequest):
    """What can run in one batch with ``request``: the same model, attack and settings but the seed
    (each image keeps its own); an attack that draws its randomness for the whole batch runs alone."""
    choice = request.choice
    if choice.attack in image_attack.BATCHED:
        return (request.model, choice.attack, tuple((k, v) for k, v in choice.values if k != "seed"))
    return (request.model, request.image, request.label, choice.key())


def start_attacks(jobs: list[tuple[ImageRequest, object, np.ndarray]]) -> None:
    """Queue the attacks of ``jobs`` ((request, model, pixels), as :func:`attack_image` takes them) at
    once, for a page that shows them all: the workers run them back to back while the page waits for
    the first, instead of each waiting for the page to ask for it. A request already stored or already
    queued (or kept by this session) is left as it is; a finished one is stored even when its visitor
    has left."""
    mine = st.session_state.get(store_key("lab"), {})
    for request, model, x in jobs:
        request.choice.validate()
        if request.crafted_on is None and request.choice.attack != image_attack.NONE \
                and request not in mine and request not in SHARED["lab"]:
            _ticket(request, model, x, keep=True)


def _ticket(request: ImageRequest, model, x: np.ndarray, keep: bool = False):
    """The queue's ticket for ``request``: the one already there (whose visitor may have left), or a new
    one. ``keep``: store its result in the shared store when it is done (nobody may be waiting)."""
    with _IN_FLIGHT_LOCK:
        ticket = _IN_FLIGHT.get(request)
        if ticket is None:
            ticket = _IN_FLIGHT[request] = ATTACK_QUEUE.submit(
                _group(request), _Queued(model, x, request.label, request.choice))
            ticket.future.add_done_callback(lambda f: _forget(request, f if keep else None))
    return ticket


def _queued(request: ImageRequest, model, x: np.ndarray, text: str, update: Update) -> LabResult:
    """Submit the attack to the queue (or join the same request already there) and wait for it, telling
    the visitor what it waits for."""
    ticket = _ticket(request, model, x)
    shown = None
    while not futures.wait([ticket.future], timeout=POLL_SECONDS).done:
        state = _waiting(ticket, text)
        if state != shown:
            update(*state)
            shown = state
    return ticket.future.result()


_IN_FLIGHT: dict = {}  # request -> its ticket, while it waits or runs
_IN_FLIGHT_LOCK = threading.Lock()


def _forget(request: ImageRequest, keep: futures.Future | None = None) -> None:
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.pop(request, None)
    if keep is not None and not keep.cancelled() and keep.exception() is None:
        SHARED["lab"].put(request, keep.result())


def _waiting(ticket, text: str) -> tuple[float, str]:
    """(fraction done, text) for a visitor whose attack waits in the queue or runs in a batch."""
    others = ATTACK_QUEUE.others(ticket)
    if ticket.future.running():
        done, total = _PROGRESS.get(ticket.group, (0, 1))
        # in quarters: thirty waiting visitors told of every step would send 600 updates a batch, each a
        # message the server builds under the GIL the batch needs
        quarter = max(1, total // 4)
        done = min(total, done // quarter * quarter)
        note = f"{text}: step {done} of {total}"
        return done / total, note + (f" ({_others(others)} in the same batch)" if others else "")
    seconds = ATTACK_QUEUE.expected_seconds(ticket)
    wait = f": about {seconds:.0f} s" if seconds is not None and seconds >= 1 else ""
    return 0.0, f"{_others(others)}{wait}. {text} starts next."


def _others(n: int) -> str:
    """"3 other visitors are attacking" (the words the class-server test knows as volatile)."""
    return f"{n} other visitor is attacking" if n == 1 else f"{n} other visitors are attacking"


def own_choice(choice: AttackChoice, model) -> tuple[AttackChoice, str]:
    """The attack ``choice`` for one model: a mask-adaptive attack becomes its fallback on a model
    without a mask defence (what it reduces to there), with a note saying so (else an empty note)."""
    if choice.attack == image_attack.NONE:
        return choice, ""
    spec = cas.ATTACKS[choice.attack].for_model(model)
    if spec.name != choice.attack:
        note = f"no CAS module (nor a relative) here, so this is plain {image_attack.attack_label(spec.name)}"
        return AttackChoice(spec.name, **dict(choice.values)), note
    return choice, ""


# -- many images ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StatsRequest:
    """Channel statistics of ``model`` (its key) on the first ``n`` test images of class ``cls`` (or
    "all") in the fixed shuffle, clean and under ``attack`` (ε = ``eps``/255, ``steps`` steps, the
    automatic step size); ``attack`` is replaced by its fallback on a model without CAS."""

    model: str
    cls: str
    n: int
    attack: str
    eps: float
    steps: int


def channel_statistics(request: StatsRequest, model, name: str,
                       display: Display | None = None) -> cas_stats.ModelStats:
    """:func:`cas.stats.channel_statistics` for ``request`` (``name``: the model's name in the results)."""
    attack = cas.ATTACKS[request.attack].for_model(model).name
    key = StatsRequest(request.model, request.cls, request.n, attack, request.eps, request.steps)

    def compute() -> cas_stats.ModelStats:
        xs, ys = images.shuffled_subset(key.n, key.cls)
        settings = cas.AttackSettings(eps=key.eps / 255, steps=key.steps)  # automatic step size

        def work(update: Update) -> cas_stats.ModelStats:
            with threads(all_cores()):
                return cas_stats.channel_statistics(
                    model, xs, ys, attack, settings, batch_size=64, name=name,
                    progress=lambda d, t: update(d / t, f"{name}: {d} of {t} images"))

        return _run(display, f"{name}: attacking {len(ys)} images", work)

    return cached((key, name), compute, store="stats")


def stats_table(results: dict[str, cas_stats.ModelStats], threshold: float):
    """The Channel statistics summary: one row per model, mask module (CAS or a relative) and stage (a
    DataFrame)."""
    import pandas as pd

    return pd.DataFrame([r for s in results.values() for r in cas_stats.summary_rows(s, threshold)])


def paper_claims(results: dict[str, cas_stats.ModelStats], cards: dict[str, dict], threshold: float) -> list[dict]:
    """The paper's claims checked on these results (the first model of each role: standard, adversarially
    trained, CAS), each with its verdict and evidence (:func:`cas.stats.paper_effects`). The paper's claims
    are about CAS: a model with one of its relatives (CIFS, EWAS, FSR) plays no role in them."""
    roles = {}
    for name, s in results.items():
        card = cards[name]
        card = card if isinstance(card, cas.ModelCard) else cas.ModelCard.from_dict(dict(card))
        if card.defense not in (None, "cas"):
            continue
        roles.setdefault(cas_stats.role_of(card), s)
    return cas_stats.paper_effects(roles, threshold)


@dataclass(frozen=True)
class EvalRequest:
    """A fresh evaluation of ``model`` (its key) on the first ``n`` test images of the fixed shuffle:
    clean and under each of ``attacks`` at ε = ``eps``/255, step-based attacks running ``steps`` steps."""

    model: str
    n: int
    steps: int
    eps: float
    attacks: tuple[str, ...]


def evaluation(request: EvalRequest, model, name: str, display: Display | None = None):
    """:func:`cas.evaluate.evaluate` for ``request``: an ``EvalResult`` (accuracies, standard errors, flags).
    The slow attacks (not offered one image at a time) run on at most
    :data:`app.common.images.MAX_SLOW_ATTACK_IMAGES` images; Square gets 1,000 queries."""
    r = request
    overrides = {a: {"steps": r.steps} for a, s in cas.ATTACKS.items() if s.knob("steps")}
    overrides["square"] = {"queries": 1000}
    limits = {a: min(r.n, images.MAX_SLOW_ATTACK_IMAGES) for a in r.attacks if not cas.ATTACKS[a].interactive}

    def work(update: Update):
        xs, ys = images.shuffled_subset(r.n)
        with threads(all_cores()):
            return evaluate(model, xs, ys, list(r.attacks), eps=r.eps / 255, batch_size=64, device="cpu",
                            overrides=overrides, limits=limits,
                            progress=lambda k, d, t: update(d / t, f"{name}: {k}, {d} of {t} images"))

    return cached(("eval", r), lambda: _run(display, name, work), store="robustness")


@dataclass(frozen=True)
class CurveRequest:
    """Accuracy of ``model`` (its key) under ``attack`` (``steps`` steps) at each ε (/255) of
    ``eps_values``, on the first ``n`` test images of the fixed shuffle."""

    model: str
    n: int
    steps: int
    eps_values: tuple[float, ...]
    attack: str


def eps_curve(request: CurveRequest, model, name: str, display: Display | None = None) -> list[float]:
    """:func:`cas.evaluate.accuracy_vs_eps` for ``request``: one accuracy (%) per ε, every ε in one
    batched job (each image-ε pair with its own budget)."""
    r = request
    label = image_attack.attack_label(r.attack)

    def work(update: Update) -> list[float]:
        xs, ys = images.shuffled_subset(r.n)
        with threads(all_cores()):
            return accuracy_vs_eps(model, xs, ys, r.attack, [e / 255 for e in r.eps_values], steps=r.steps,
                                   progress=lambda d, t: update(d / t, f"{name}, {label}: {d} of {t} image-ε pairs"))

    return cached(("curve", r), lambda: _run(display, f"{name}, {label}", work), store="robustness")


def curve_attacks(model) -> list[str]:
    """The attacks of a model's ε-curve: plain PGD, and soft-mask PGD for a model with a mask defence."""
    return list(dict.fromkeys(["pgd", cas.ATTACKS["soft_mask_pgd"].for_model(model).name]))
