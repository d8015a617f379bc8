"""The server's shared results and its batch queue (app/common/sharing.py), driven from plain threads."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.common.sharing import BatchQueue, SharedResults, nbytes


def _in_threads(n, fn):
    out, errors = [None] * n, [None] * n
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        try:
            out[i] = fn(i)
        except BaseException as err:  # noqa: BLE001 - collected for the assertions
            errors[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return out, errors


def test_identical_requests_share_one_computation():
    store, calls = SharedResults(10**6), []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return np.arange(10)

    out, errors = _in_threads(8, lambda i: store.get(("step", 6), compute))
    assert errors == [None] * 8 and len(calls) == 1
    assert all(o is out[0] for o in out)
    assert store.get(("step", 6), compute) is out[0] and len(calls) == 1
    assert store.computations == 1 and store.hits >= 1


def test_an_error_reaches_every_waiting_request_and_is_not_kept():
    store, calls = SharedResults(10**6), []

    def broken():
        calls.append(1)
        time.sleep(0.2)
        raise ValueError("the model gives NaN")

    _, errors = _in_threads(5, lambda i: store.get("k", broken))
    assert len(calls) == 1 and all(isinstance(e, ValueError) for e in errors)
    assert "k" not in store
    assert store.get("k", lambda: 3) == 3  # a later request computes again


class _Left(BaseException):
    """What Streamlit raises in a script whose visitor left (not an Exception)."""


def test_a_computation_abandoned_by_its_visitor_is_taken_over():
    store, started = SharedResults(10**6), threading.Event()

    def abandoned():
        started.set()
        time.sleep(0.2)
        raise _Left()

    result = {}

    def waiter():
        started.wait(5)
        result["v"] = store.get("k", lambda: "computed by the waiter")

    t = threading.Thread(target=waiter)
    t.start()
    with pytest.raises(_Left):
        store.get("k", abandoned)
    t.join(10)
    assert result == {"v": "computed by the waiter"}


def test_bounded_by_bytes_least_recently_used_first():
    store = SharedResults(3 * 8000 + 100)
    for k in "abc":
        store.get(k, lambda: np.zeros(1000))  # 8,000 bytes each
    store.get("a", lambda: None)  # a is used again: b is now the oldest
    store.get("d", lambda: np.zeros(1000))
    assert "b" not in store and all(k in store for k in "acd")
    assert store.bytes <= store.max_bytes
    big = store.get("huge", lambda: np.zeros(10**5))
    assert big.shape == (10**5,) and "huge" not in store  # returned, never kept past the bound


def test_nbytes_counts_arrays_inside_containers():
    assert nbytes(np.zeros(100, dtype=np.float32)) == 400
    assert nbytes({"a": [np.zeros(10), np.zeros(10)]}) >= 160


def test_requests_waiting_together_run_as_one_batch():
    seen = []

    def run_batch(group, requests):
        seen.append((group, list(requests)))
        time.sleep(0.3)
        return [r * 10 for r in requests]

    queue = BatchQueue(run_batch)
    first = queue.submit("m", 0)
    time.sleep(0.05)  # the first batch (one request) is running now
    out, errors = _in_threads(6, lambda i: queue.run("m", i + 1, timeout=10))
    assert errors == [None] * 6 and out == [10 * (i + 1) for i in range(6)]
    assert first.future.result(5) == 0
    assert [len(r) for _, r in seen] == [1, 6], seen  # the six waited for the running batch, then ran together


def test_groups_never_mix():
    seen = []

    def run_batch(group, requests):
        seen.append((group, sorted(requests)))
        time.sleep(0.1)
        return requests

    queue = BatchQueue(run_batch)
    out, errors = _in_threads(8, lambda i: queue.run(i % 2, i, timeout=10))
    assert errors == [None] * 8 and out == list(range(8))
    assert all(all(r % 2 == g for r in reqs) for g, reqs in seen)


@pytest.mark.parametrize("workers", [1, 2])
def test_two_workers_run_two_groups_at_once_never_one_group_twice(workers):
    lock, running, most, seen = threading.Lock(), [], [0], []

    def run_batch(group, requests):
        with lock:
            assert group not in running  # one group is never in two workers at once
            running.append(group)
            most[0] = max(most[0], len(running))
        time.sleep(0.2)
        with lock:
            running.remove(group)
            seen.append((group, len(requests)))
        return requests

    queue = BatchQueue(run_batch, workers=workers)
    first = queue.submit("a", 0)
    time.sleep(0.05)  # "a" runs alone
    tickets = [queue.submit(g, i) for i, g in enumerate("abab", start=1)]
    assert [t.future.result(5) for t in [first, *tickets]] == [0, 1, 2, 3, 4]
    assert most[0] == workers
    assert sorted(seen) == [("a", 1), ("a", 2), ("b", 2)]  # the waiting requests of a group ran as one batch
    time.sleep(0.05)
    assert queue._idle <= workers and not queue._running


def test_a_failing_request_gets_its_error_and_the_others_their_results():
    def run_batch(group, requests):
        time.sleep(0.1)
        if -1 in requests:
            raise ValueError("bad request")
        return [r + 1 for r in requests]

    queue = BatchQueue(run_batch)
    queue.submit("m", 100)
    time.sleep(0.02)
    out, errors = _in_threads(4, lambda i: queue.run("m", -1 if i == 2 else i, timeout=10))
    assert isinstance(errors[2], ValueError)
    assert [out[i] for i in (0, 1, 3)] == [1, 2, 4] and [errors[i] for i in (0, 1, 3)] == [None] * 3


def test_waiting_visitors_are_told_how_many_others_and_how_long():
    release = threading.Event()

    def run_batch(group, requests):
        release.wait(5)
        return requests

    queue = BatchQueue(run_batch)
    tickets = [queue.submit("m", i) for i in range(4)]
    time.sleep(0.05)
    assert queue.others(tickets[-1]) == 3
    assert queue.expected_seconds(tickets[-1]) is None  # nothing timed yet
    release.set()
    assert [t.future.result(5) for t in tickets] == [0, 1, 2, 3]
    t = queue.submit("m", 9)
    assert t.future.result(5) == 9
    assert queue.expected_seconds(t) is not None


def test_shared_figures_are_built_once_per_content_and_mode():
    from app.common.sharing import SharedFigures

    built, mode = [], ["normal"]

    class Result:  # an object that is neither a container nor a dataclass: counted by identity
        values = np.arange(5.0)

    def build(result, order, title="t"):
        built.append(1)
        return {"data": [float(result.values.sum())], "order": list(order), "title": title, "mode": mode[0]}

    share = SharedFigures(10**7).share(build, mode=lambda: mode[0])
    result = Result()
    a = share(result, np.array([2, 1, 0]))
    b = share(result, np.array([2, 1, 0]))  # a new array with the same content
    assert a is b and len(built) == 1
    assert share(result, np.array([0, 1, 2])) is not a and len(built) == 2  # other content: another figure
    assert share(Result(), np.array([2, 1, 0])) is not a  # another result object
    assert share(result, np.array([2.0, 1.0, 0.0])) is not a  # arrays count by dtype and content
    mode[0] = "presentation"
    assert share(result, np.array([2, 1, 0]))["mode"] == "presentation"
    assert share(result, np.array([2, 1, 0]), title="u")["title"] == "u"


def test_dataclass_arguments_count_by_content():
    import dataclasses

    from app.common.sharing import SharedFigures

    @dataclasses.dataclass
    class Panel:
        title: str
        bars: np.ndarray

    built = []
    share = SharedFigures(10**7).share(lambda p: built.append(1) or {"title": p.title})
    assert share(Panel("a", np.ones(3))) is share(Panel("a", np.ones(3))) and len(built) == 1
    share(Panel("a", np.zeros(3)))
    assert len(built) == 2


def test_put_keeps_the_first_value_and_stays_in_budget():
    store = SharedResults(max_bytes=300, size=lambda v: v)
    store.put("a", 100)
    store.put("a", 200)  # stored already: the first value stays
    assert store.peek("a") == 100 and store.bytes == 100
    store.put("huge", 400)  # over the whole budget: not kept
    assert "huge" not in store
    store.put("b", 150)
    store.put("c", 150)  # over budget: the least recently used goes
    assert "a" not in store and store.bytes == 300


def test_a_shared_figure_is_converted_once_and_refuses_changes():
    import plotly.graph_objects as go
    import plotly.io as pio

    from app.common.sharing import SharedFigure, SharedFigures

    def build(n):
        return go.Figure(go.Bar(y=np.arange(n, dtype=float), name="bars"), layout=dict(title="t"))

    share = SharedFigures(10**7).share(build)
    fig = share(4)
    assert isinstance(fig, SharedFigure) and fig.to_dict() is fig.to_dict()  # made once, not per session
    assert pio.to_json(fig, validate=False) == pio.to_json(build(4), validate=False)  # what a page sends
    assert fig.data[0].name == "bars"  # still a figure for the tests that read its traces
    with pytest.raises(TypeError):
        fig.update_layout(title="mine")
    with pytest.raises(TypeError):
        fig.add_trace(go.Bar(y=[1.0]))
    mine = go.Figure(fig)  # a copy is a plain figure and changes alone
    mine.update_layout(title="mine")
    assert fig.to_dict()["layout"]["title"] == {"text": "t"}
    pair = SharedFigures(10**7).share(lambda n: (build(n), build(n + 1)))(2)
    assert all(isinstance(f, SharedFigure) for f in pair)
    assert type(share.build(4)) is go.Figure


def test_the_model_listing_is_shared_read_only():
    import copy

    from app.common import models

    listed = models.list_available()
    assert listed is models.list_available()  # one listing for every page run, not a copy each
    if not listed:
        pytest.skip("no models installed")
    entry = listed[0]
    for change in (lambda: entry.update(name="x"), lambda: entry.__setitem__("name", "x"),
                   lambda: entry["card"].pop("method", None)):
        with pytest.raises(TypeError):
            change()
    mine = copy.deepcopy(entry)  # a writable copy
    mine["name"] = "x"
    assert entry["name"] != "x"
    assert models.card_of(entry["card"]).to_dict().keys() == entry["card"].keys()
