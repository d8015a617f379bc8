"""What one server shares between its visitors: results computed once, and one-image attacks run in batches.

A class follows the same lecture step or attacks thirty images at once on one small server. Two things
make that fast, and both live here, free of Streamlit so the tests drive them from plain threads:

- :class:`SharedResults` keeps results that depend only on their key (the model's weights, the image,
  the attack and its settings, the seed): the first session to ask computes, every identical request
  that arrives meanwhile waits for that computation, and later ones get it at once. It is bounded in
  bytes, least recently used out.
- :class:`BatchQueue` collects one-image requests that wait at the same time and runs each group that
  can run together (same model, attack and schedule) as one batch, two groups at a time. One batch of 30
  PGD-20 attacks costs about 5x one image on two cores, where 30 one-image attacks in 30 threads cost
  30x: at batch size one the work is per-operation overhead under the GIL. A request waits for at
  most the batch in progress plus its own.

Neither ever holds a model: keys name models by their weights' digest, so a model replaced under the
same name never gets another model's results.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch


def nbytes(obj, _depth: int = 0) -> int:
    """An estimate of the memory ``obj`` holds: arrays, tensors and tables by their data, containers
    and dataclasses by their parts, anything else by ``sys.getsizeof``."""
    if _depth > 8:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, torch.Tensor):
        return int(obj.element_size() * obj.nelement())
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return int(obj.memory_usage(deep=True).sum() if isinstance(obj, pd.DataFrame) else obj.memory_usage(deep=True))
    if isinstance(obj, (str, bytes)):
        return len(obj)
    if isinstance(obj, dict):
        return sum(nbytes(k, _depth + 1) + nbytes(v, _depth + 1) for k, v in obj.items()) + 64
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(nbytes(v, _depth + 1) for v in obj) + 56
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj)) + 64
    return sys.getsizeof(obj)


class SharedResults:
    """Results shared by every session of the server, each computed once.

    ``get(key, compute)`` returns the stored value, or computes it. While one thread computes a key,
    other threads asking for it wait for that computation. A computation that fails with an error
    gives every waiting thread that error and stores nothing; one that is interrupted (its visitor
    left: Streamlit stops a script with an exception that is not an ``Exception``) hands the work to
    the next waiting thread. Values larger than the whole budget are returned but not kept."""

    def __init__(self, max_bytes: int, size: Callable[[object], int] = nbytes):
        self.max_bytes = int(max_bytes)
        self.size = size
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._running: dict[Hashable, Future] = {}
        self.bytes = 0
        self.computations = 0  # finished computations (tests and benchmarks read these)
        self.hits = 0

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._values

    def peek(self, key, default=None):
        """The stored value of ``key`` without computing it (and without changing its age)."""
        with self._lock:
            item = self._values.get(key)
        return default if item is None else item[0]

    def get(self, key: Hashable, compute: Callable[[], object]):
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    self.hits += 1
                    return self._values[key][0]
                future = self._running.get(key)
                owner = future is None
                if owner:
                    future = self._running[key] = Future()
            if owner:
                return self._compute(key, compute, future)
            try:
                return future.result()
            except _Interrupted:
                continue  # its owner left before it finished: compute it here

    def put(self, key: Hashable, value) -> None:
        """Store ``value`` for ``key`` unless it is stored already or being computed (that computation's
        value is the one kept)."""
        size = self.size(value)
        with self._lock:
            if key not in self._values and key not in self._running:
                self._store(key, value, size)

    def _store(self, key, value, size: int) -> None:  # with the lock held
        if size > self.max_bytes:
            return
        self._values[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._values.popitem(last=False)
            self.bytes -= dropped

    def _compute(self, key, compute, future: Future):
        try:
            value = compute()
        except Exception as err:
            with self._lock:
                del self._running[key]
            future.set_exception(err)
            raise
        except BaseException:
            with self._lock:
                del self._running[key]
            future.set_exception(_Interrupted())
            raise
        size = self.size(value)
        with self._lock:
            del self._running[key]
            self.computations += 1
            self._store(key, value, size)
        future.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.bytes = 0


class _Interrupted(Exception):
    """The computation a thread waited for was abandoned by its owner."""


@dataclasses.dataclass
class Ticket:
    """One request in a :class:`BatchQueue`: its future, and what its page may tell the visitor."""

    group: Hashable
    request: object
    future: Future = dataclasses.field(default_factory=Future)
    queued_at: float = dataclasses.field(default_factory=time.perf_counter)


class BatchQueue:
    """Runs one-image requests from many sessions in batches, in up to ``workers`` worker threads.

    ``run_batch(group, requests) -> results`` computes a list of requests of one group at once (the
    group key says what can run together: for an attack, the model's digest, the attack and its
    schedule; each request keeps its own seed and budget). Requests that wait while a batch runs form
    the next one. Two workers run two groups at the same time: a batch of one image is bound by Python's
    per-operation overhead and leaves the second core idle, so a second group (another attack of a
    lecture step, or the other visitors' batch while the first visitor's image runs alone) runs beside
    it; a group never runs in two workers at once, so its requests gather into one batch. A batch that
    raises is run again one request at a time, so only a bad request gets its own error; a request
    that fails alone gets that error. No request is ever left waiting."""

    def __init__(self, run_batch: Callable[[Hashable, list], list], max_batch: int = 64, name: str = "batches",
                 workers: int = 2):
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.name = name
        self.workers = max(1, int(workers))
        self._cond = threading.Condition()
        self._queue: deque[Ticket] = deque()
        self._running: dict[int, list[Ticket]] = {}  # worker thread id -> the batch it runs
        self._idle = 0  # workers waiting for work
        self._started = 0
        self._history: deque[tuple[int, float]] = deque(maxlen=32)  # (batch size, seconds)
        self.batches: list[int] = []  # the size of every batch run (tests read it); bounded below

    # -- what sessions call --------------------------------------------------------------------------
    def submit(self, group: Hashable, request) -> Ticket:
        ticket = Ticket(group, request)
        with self._cond:
            self._queue.append(ticket)
            if self._idle == 0 and len(self._running) + self._idle < self.workers:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()
                self._idle += 1  # counted as waiting until it takes its first batch
            self._cond.notify_all()
        return ticket

    def run(self, group: Hashable, request, timeout: float | None = None):
        """Submit and wait for the result (raises the request's error)."""
        return self.submit(group, request).future.result(timeout)

    def others(self, ticket: Ticket) -> int:
        """How many other requests run or wait beside ``ticket`` right now."""
        with self._cond:
            return sum(1 for t in (*self._running_tickets(), *self._queue) if t is not ticket)

    def expected_seconds(self, ticket: Ticket) -> float | None:
        """About how long until ``ticket``'s result: the batch in progress plus its own (None before the
        first batch has been timed)."""
        if not self._history:
            return None
        with self._cond:
            batches = list(self._running.values())
            queued = sum(1 for t in self._queue if t.group == ticket.group)
        for batch in batches:
            if any(t is ticket for t in batch):
                return self._seconds(len(batch))
        ahead = min((len(b) for b in batches), default=0) if len(batches) >= self.workers else 0
        return (self._seconds(ahead) if ahead else 0.0) + self._seconds(max(1, queued))

    # -- the workers ---------------------------------------------------------------------------------
    def _running_tickets(self) -> list[Ticket]:
        return [t for batch in self._running.values() for t in batch]

    def _seconds(self, n: int) -> float:
        """A batch's expected time from the last batches: a fixed cost plus a cost per image (least squares)."""
        sizes = np.array([s for s, _ in self._history], dtype=float)
        secs = np.array([t for _, t in self._history], dtype=float)
        if len(set(sizes)) < 2:
            return float(secs.mean() / sizes.mean() * n) if n > sizes.mean() else float(secs.mean())
        slope, base = np.polyfit(sizes, secs, 1)
        return float(max(base, 0.0) + max(slope, 0.0) * n)

    def _take(self) -> list[Ticket]:
        """The oldest waiting request whose group no worker runs now: every waiting request of that group,
        up to ``max_batch`` (none: an empty list)."""
        busy = {batch[0].group for batch in self._running.values() if batch}
        group = next((t.group for t in self._queue if t.group not in busy), None)
        if group is None:
            return []
        batch = [t for t in self._queue if t.group == group][: self.max_batch]
        for t in batch:
            self._queue.remove(t)
        return batch

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            with self._cond:
                batch = self._take()
                while not batch:
                    if not self._cond.wait(timeout=30) and not self._queue:
                        self._idle -= 1
                        return  # idle: the next request starts a new worker
                    batch = self._take()
                self._idle -= 1
                self._running[me] = batch
            try:
                self._run(batch)
            finally:
                with self._cond:
                    del self._running[me]
                    self._idle += 1
                    self._cond.notify_all()  # a group this worker ran may have requests waiting

    def _run(self, batch: list[Ticket]) -> None:
        live = [t for t in batch if t.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            results = self.run_batch(live[0].group, [t.request for t in live])
            if len(results) != len(live):
                raise RuntimeError(f"a batch of {len(live)} requests gave {len(results)} results")
        except Exception as err:  # noqa: BLE001 - handed to the waiting sessions
            if len(live) == 1:
                live[0].future.set_exception(err)
                return
            for t in live:  # find the request that fails: each one alone
                try:
                    (result,) = self.run_batch(t.group, [t.request])
                    t.future.set_result(result)
                except Exception as one_err:  # noqa: BLE001 - handed to the waiting session
                    t.future.set_exception(one_err)
            return
        self._history.append((len(live), time.perf_counter() - start))
        self.batches = (self.batches + [len(live)])[-256:]
        for t, result in zip(live, results):
            t.future.set_result(result)


# -- figures -------------------------------------------------------------------------------------------

def _token(value, refs: list):
    """A hashable stand-in for a figure builder's argument: plain values as they are; arrays,
    containers and dataclasses (results, chart panels) by their content; anything else by its
    identity, kept alive in ``refs`` with the figure so that the identity cannot be reused while the
    figure is stored."""
    if value is None or isinstance(value, (str, bytes, int, float, bool, np.generic)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__,
                tuple(_token(getattr(value, f.name), refs) for f in dataclasses.fields(value)))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, hashlib.blake2b(np.ascontiguousarray(value).tobytes(),
                                                                       digest_size=16).hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_token(v, refs) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((_token(k, refs), _token(v, refs)) for k, v in value.items()))
    refs.append(value)
    return ("id", id(value))


def _figure_bytes(fig) -> int:
    """About what a stored figure holds in memory: 40 kB, 7 kB a trace and twice its traces' data (the
    figure's own arrays and its JSON mapping's encoded ones), for a :class:`SharedFigure`; read from its
    mapping, which is quick where a JSON dump of each new figure cost as much as building it. (Measured
    with ``tracemalloc``: the Attack Lab's channel chart holds 107 kB, its probability chart 71 kB.)
    Figures in a tuple or list count together; anything else counts as 100 kB."""
    if isinstance(fig, (tuple, list)):
        return sum(_figure_bytes(f) for f in fig) + 56
    if isinstance(fig, SharedFigure):
        data = fig._as_dict.get("data", [])
        return 40_000 + 7_000 * len(data) + 2 * nbytes(data)
    return 100_000


class SharedCalls:
    """Calls of pure functions whose results every visitor of a page sees (figures, summaries), each
    computed once for the whole server.

    ``share(builder, mode)`` returns ``builder`` keyed on its name, its arguments (see :func:`_token`)
    and ``mode()`` (e.g. whether presentation mode enlarges the fonts). What a shared builder returns is
    shared by every session: use it, never change it. ``prepare`` turns a new value into what is stored
    (by default the value itself)."""

    def __init__(self, max_bytes: int, size: Callable[[object], int] = nbytes,
                 prepare: Callable[[object], object] = lambda value: value):
        self.store = SharedResults(max_bytes, size=lambda item: size(item[1]))
        self.prepare = prepare

    def share(self, builder: Callable, mode: Callable[[], Hashable] = lambda: None) -> Callable:
        @functools.wraps(builder)
        def shared(*args, **kwargs):
            refs: list = []
            key = (builder.__module__, builder.__qualname__, _token(args, refs),
                   _token(dict(sorted(kwargs.items())), refs), mode())
            return self.store.get(key, lambda: (refs, self.prepare(builder(*args, **kwargs))))[1]

        shared.build = builder  # the builder itself, for tests and for figures a page changes
        return shared


class SharedFigures(SharedCalls):
    """:class:`SharedCalls` for figure builders: every Plotly figure a builder returns (alone, or in a
    tuple or list) is stored as a :class:`SharedFigure`, weighed by :func:`_figure_bytes`."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, size=_figure_bytes, prepare=_shared_figures)


def _shared_figures(value):
    if isinstance(value, (tuple, list)):
        return type(value)(_shared_figures(v) for v in value)
    if isinstance(value, go.Figure) and not isinstance(value, SharedFigure):
        as_dict = value.to_dict()
        for trace in as_dict.get("data", []):
            trace.pop("uid", None)  # what plotly.io.to_json would take out of each copy
        value.__class__ = SharedFigure  # the same object, now read-only (no copy of its traces)
        value._as_dict = as_dict
    return value


class SharedFigure(go.Figure):
    """A figure that every session draws: its JSON mapping is made once when it is stored, not again
    for each session (``st.plotly_chart`` asks ``to_dict()``, which copies every trace and encodes its
    arrays: the largest part of a lecture page's own work). It refuses changes: change a copy
    (``go.Figure(fig)``) or build one with the builder's ``.build``."""

    def to_dict(self) -> dict:
        return self._as_dict

    def _refuse(self, *args, **kwargs):
        raise TypeError("a shared figure is drawn by every session: build your own with the builder's "
                        ".build, or change a copy (go.Figure(fig))")

    update = update_layout = update_traces = update_xaxes = update_yaxes = _refuse
    add_trace = add_traces = add_annotation = add_shape = add_hline = add_vline = _refuse
