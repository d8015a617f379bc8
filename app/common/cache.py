"""Results kept per browser session, so that changing a chart option never re-runs an attack, and
the Attack Lab's one-image analysis run with a progress bar.

Each kind of result has its own store and budget (:data:`STORES`), so that many quick Attack Lab
results never push out a Channel statistics run or a Robustness evaluation that took minutes."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import streamlit as st

from . import images, lab
from .pickers import ImageChoice

# store -> how many results it keeps (the least recently used go first; None: all, for the session).
STORES = {
    "lab": 64,           # Attack Lab and Compare: one image's attack each, tens of kB
    "stats": 8,          # Channel statistics: one model on hundreds of images each
    "robustness": None,  # Robustness evaluations and curves: minutes of work each, small results
}


def store_key(store: str) -> str:
    """The session-state key holding ``store``'s results (``"_lab_results"`` for the Attack Lab's)."""
    return f"_{store}_results"


def cached(key: tuple, compute: Callable[[], object], store: str = "lab"):
    """Return the result stored under ``key`` in this session's ``store`` (one of :data:`STORES`),
    computing it on first use. Chart options therefore never re-run an attack.
    ``st.session_state["_lab_computations"]`` counts the computations of every store (shown to
    nobody; tests read it)."""
    limit = STORES[store]
    results = st.session_state.setdefault(store_key(store), OrderedDict())
    if key in results:
        results.move_to_end(key)
        return results[key]
    value = compute()
    st.session_state["_lab_computations"] = st.session_state.get("_lab_computations", 0) + 1
    results[key] = value
    while limit is not None and len(results) > limit:
        results.popitem(last=False)
    return value


def progress_reporter(label: str, where=st) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress bar and (callback(done, total), clear()) for an attack."""
    bar = where.progress(0.0, text=f"{label}…")

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: step {done} of {total}")

    return update, bar.empty


def attack_image(model_key: str, model, image: ImageChoice, choice: lab.AttackChoice, where=st,
                 x_adv: np.ndarray | None = None, extra_key: tuple = ()) -> lab.LabResult:
    """:func:`app.common.lab.attack_image` with a progress bar, cached per (model, image, settings)."""
    key = (model_key, images.digest(image.x), image.label, choice.key(), extra_key)

    def compute():
        update, clear = progress_reporter(f"{lab.attack_label(choice.attack)} on {image.title}", where)
        try:
            return lab.attack_image(model, image.x, choice, image.label, progress=update, x_adv=x_adv)
        finally:
            clear()

    return cached(key, compute)
