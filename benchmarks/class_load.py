"""A class on one server: N visitors at once, each a headless client speaking Streamlit's own websocket
protocol (``tests/st_client.py``), no browsers.

    python -m benchmarks.class_load [--clients 1,8,30] [--scenarios lecture,lab,mix,clicks]
                                    [--steps 20] [--clicks 10] [--rounds 1] [--visit-timeout 300]
                                    [--time-limit 1800]

Each (scenario, client count) runs on a fresh server (``python -m app.serve`` on a free local port, as
``scripts/app.sh`` starts it, with the bundled models or ``$CAS_PRETRAINED_DIR``), so that no row finds
results an earlier row computed. The server first gets one warm-up visit (the Attack Lab on a test image
no visitor uses: it loads the model), then the visitors arrive, all at the same moment:

- ``lecture``: everyone opens the same lecture step (``?step=6``) before anyone has computed it;
- ``lab``: everyone attacks a different test image in the Attack Lab (PGD on ``at-cas``, ``--steps``);
- ``mix``: one visitor starts a Channel statistics run (``--stats-query``, then "Compute statistics"), and
  ``--mix-delay`` seconds later the others attack as in ``lab``;
- ``clicks``: the memory run: every visitor attacks ``--clicks`` images one after the other (a new image
  number each time, as a click on the page does); with ``--rounds 2`` each then goes through the same
  images again ("revisit" visits, whose results are all stored), so that the second half shows what the
  server's memory does when the bounded stores gain nothing new: a leak would still grow there.

One client count is always 1 (added if missing): that row is the visit alone, measured in the same run,
and the other rows are divided by it. For ``mix`` the statistics run is compared with the statistics run
alone, and the attacks with the ``lab`` row of one client (or, without it, a solo attack measured on the
``mix`` row of one client after its statistics run).

Prints, per row: visits, errors, p50 / p95 / max of the server's time per visit (from the client's
``rerun_script`` to ``script_finished``), p50 and max relative to the solo visit, the server's CPU time
over the row's visits (in all and per visit: what the visits cost the server's cores, as against the
time they waited), and the server process's
resident memory (from ``/proc/PID/status``) at the start (after the warm-up), in the middle (half the visits
done), at the end, and the most seen (sampled every 0.5 s). Errors: visits that timed out, raised,
drew an exception or did not finish, and tracebacks in the server's log.

Bounded: every visit has ``--visit-timeout``, the whole run ``--time-limit`` (rows that no longer fit are
skipped and listed; a row's server start, up to 90 s, comes on top); every client talks only to the
server on 127.0.0.1, which is stopped at the end.

Why plain asyncio and not Locust: Locust drives HTTP requests from gevent greenlets and has no Streamlit
client; one would still write this protocol client, on a websocket library patched for gevent, and give
up reusing it in the pytest suite (``tests/test_class_server.py``). Its strength, a steady request rate
with live statistics, is not what a class does: here everyone arrives at the same moment and each visit
is one long server run, whose time ``script_finished`` marks. One event loop in one process holds all
the websockets; its share of the CPU (reading the server's messages) is small next to the server's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.browser import serve_process
from tests.st_client import StreamlitClient, VisitTimeout

SCENARIOS = ("lecture", "lab", "mix", "clicks")
LAB_PAGE = ""  # the Attack Lab is the default page
WARM_UP_IMAGE = 9990
SOLO_LAB_IMAGE = 9991
FIRST_IMAGE = 100  # visitor k attacks test image FIRST_IMAGE + k (clicks: + k * clicks + j)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    v = sorted(values)
    if not v:
        return math.nan
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used, in seconds (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` in ``/proc/PID/status``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


@dataclass
class Row:
    """One (scenario, client count): the visits' times by kind ("attack", "lecture", "stats"), errors and
    memory."""

    scenario: str
    clients: int
    times: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)
    planned: int = 0
    done: int = 0
    seconds: float = 0.0
    cpu: float = math.nan  # the server's CPU seconds over the row's visits

    def add(self, kind: str, seconds: float) -> None:
        self.times.setdefault(kind, []).append(seconds)


class Memory:
    """Samples the server's RSS every ``every`` seconds, and once when half the planned visits are done."""

    def __init__(self, pid: int, row: Row, every: float = 0.5):
        self.pid, self.row, self.every = pid, row, every
        self.peak = math.nan
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        while True:
            value = rss_mib(self.pid)
            self.peak = value if math.isnan(self.peak) else max(self.peak, value)
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self.row.rss["start"] = rss_mib(self.pid)
        self._cpu = cpu_seconds(self.pid)
        self._task = asyncio.create_task(self._loop())

    def visit_done(self) -> None:
        self.row.done += 1
        if "middle" not in self.row.rss and self.row.done * 2 >= self.row.planned:
            self.row.rss["middle"] = rss_mib(self.pid)

    async def stop(self) -> None:
        self.row.rss["end"] = rss_mib(self.pid)
        self.row.cpu = cpu_seconds(self.pid) - self._cpu
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.row.rss["peak"] = max(self.peak, self.row.rss["end"])


class Run:
    """One row's visitors against one server."""

    def __init__(self, url: str, args, row: Row, memory: Memory, deadline: float):
        self.url, self.args, self.row, self.memory, self.deadline = url, args, row, memory, deadline

    def timeout(self) -> float:
        return max(1.0, min(self.args.visit_timeout, self.deadline - time.monotonic()))

    def lab_query(self, image: int) -> str:
        return f"model={self.args.model}&attack={self.args.attack}&img={image}&steps={self.args.steps}"

    async def timed(self, kind: str, label: str, action) -> bool:
        """Run one visit (``action``: a coroutine returning a Visit); record its time or its error."""
        try:
            visit = await action
        except VisitTimeout as e:
            self.row.errors.append(f"{label}: timed out ({e})")
            return False
        except Exception as e:  # noqa: BLE001 - every failure is a result to report
            self.row.errors.append(f"{label}: {type(e).__name__}: {e}")
            return False
        finally:
            self.memory.visit_done()
        if not visit.ok:
            self.row.errors.append(f"{label}: {visit.status or 'no status'} {visit.exceptions[:2]} "
                                   f"{'page not found' if visit.page_not_found else ''}".strip())
            return False
        self.row.add(kind, visit.seconds)
        return True

    async def client(self, label: str, body) -> None:
        """A client session running ``body(client)``; a failed connection is an error of the row."""
        try:
            async with StreamlitClient(self.url, timeout=self.timeout()) as c:
                await body(c)
        except Exception as e:  # noqa: BLE001
            self.row.errors.append(f"{label}: {type(e).__name__}: {e}")

    # -- the visitors ----------------------------------------------------------------------------------

    async def attacker(self, k: int, start: asyncio.Event) -> None:
        async def body(c):
            await start.wait()
            await self.timed("attack", f"visitor {k}", c.visit(LAB_PAGE, self.lab_query(FIRST_IMAGE + k),
                                                                timeout=self.timeout()))
        await self.client(f"visitor {k}", body)

    async def lecturer(self, k: int, start: asyncio.Event) -> None:
        async def body(c):
            await start.wait()
            await self.timed("lecture", f"visitor {k}", c.visit("lecture", self.args.lecture_query,
                                                                 timeout=self.timeout()))
        await self.client(f"visitor {k}", body)

    async def clicker(self, k: int, start: asyncio.Event) -> None:
        first = FIRST_IMAGE + k * self.args.clicks

        async def body(c):
            await start.wait()
            if not await self.timed("attack", f"visitor {k} click 1",
                                    c.visit(LAB_PAGE, self.lab_query(first), timeout=self.timeout())):
                return
            for j in range(1, self.args.clicks * self.args.rounds):
                image = first + j % self.args.clicks
                if not await self.timed("attack" if j < self.args.clicks else "revisit", f"visitor {k} click {j + 1}",
                                        c.set_widget("lab_idx", int_value=image, timeout=self.timeout())):
                    return
        await self.client(f"visitor {k}", body)

    async def statistician(self, started: asyncio.Event) -> None:
        async def body(c):
            await c.visit("channel_stats", self.args.stats_query, timeout=self.timeout())
            run = c.click(label="Compute statistics", timeout=self.timeout())
            task = asyncio.ensure_future(self.timed("stats", "statistics run", run))
            await asyncio.sleep(0.2)  # the click is on its way
            started.set()
            await task
        try:
            await self.client("statistics visitor", body)
        finally:
            started.set()

    async def solo_attack(self) -> None:
        async def body(c):
            await self.timed("solo_attack", "solo attack", c.visit(LAB_PAGE, self.lab_query(SOLO_LAB_IMAGE),
                                                                   timeout=self.timeout()))
        await self.client("solo attack", body)


async def run_row(url: str, pid: int, args, row: Row, deadline: float) -> None:
    memory = Memory(pid, row)
    run = Run(url, args, row, memory, deadline)
    # the warm-up: loads the model, computes nothing a visitor asks for
    async with StreamlitClient(url, timeout=run.timeout()) as c:
        await c.visit(LAB_PAGE, run.lab_query(WARM_UP_IMAGE))
    n, start = row.clients, asyncio.Event()
    if row.scenario == "lecture":
        tasks = [run.lecturer(k, start) for k in range(n)]
        row.planned = n
    elif row.scenario == "lab":
        tasks = [run.attacker(k, start) for k in range(n)]
        row.planned = n
    elif row.scenario == "clicks":
        tasks = [run.clicker(k, start) for k in range(n)]
        row.planned = n * args.clicks * args.rounds
    else:  # mix: one statistics run, then the others attack
        row.planned = n
        started = asyncio.Event()
        tasks = [run.statistician(started)] + [run.attacker(k, start) for k in range(1, n)]
        tasks.append(_release_after(started, args.mix_delay, start))
    memory.start()
    t0 = time.perf_counter()
    if row.scenario != "mix":
        start.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        row.errors.append("the run's time limit was reached during this row")
    if row.scenario == "mix" and n == 1 and time.monotonic() < deadline:
        await run.solo_attack()  # the attack alone, after the statistics run alone
    row.seconds = time.perf_counter() - t0
    await memory.stop()


async def _release_after(event: asyncio.Event, delay: float, release: asyncio.Event) -> None:
    await event.wait()
    await asyncio.sleep(delay)
    release.set()


def log_errors(log: Path) -> list[str]:
    """Tracebacks in the server's log (their last line)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    out = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            out.append("server log: " + (lines[j] if j < len(lines) else line))
    return out


def stats_of(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 50), percentile(values, 95), max(values) if values else math.nan


def report(rows: list[Row], skipped: list[str], steps: int) -> None:
    solo = {}
    for r in rows:
        if r.clients == 1:
            for kind, values in r.times.items():
                solo.setdefault("attack" if kind == "solo_attack" else kind, percentile(values, 50))
    lab_solo = next((percentile(r.times["attack"], 50) for r in rows
                     if r.scenario == "lab" and r.clients == 1 and r.times.get("attack")), None)
    if lab_solo is not None:
        solo["attack"] = lab_solo
    print(f"\nTimes in seconds, from rerun_script to script_finished (PGD-{steps}); x solo: p50 and max / solo p50;"
          " CPU: the server's CPU seconds over the row, and per visit in ms; RSS in MiB (start / middle / end / peak)")
    head = f"{'scenario':9} {'clients':>7} {'kind':8} {'visits':>6} {'errors':>6} {'p50':>7} {'p95':>7} {'max':>7}" \
           f" {'p50 x':>6} {'max x':>6} {'CPU s':>6} {'ms/v':>5}   RSS"
    print(head)
    print("-" * len(head))
    for r in rows:
        kinds = [k for k in ("lecture", "attack", "revisit", "stats", "solo_attack") if k in r.times] or ["-"]
        for i, kind in enumerate(kinds):
            values = r.times.get(kind, [])
            p50, p95, mx = stats_of(values)
            base = solo.get("attack" if kind in ("solo_attack", "revisit") else kind)
            ratio = (f"{p50 / base:6.2f} {mx / base:6.2f}" if base and values else f"{'':6} {'':6}")
            rss = "/".join(f"{r.rss.get(k, math.nan):.0f}" for k in ("start", "middle", "end", "peak")) if i == 0 else ""
            errs = len(r.errors) if i == 0 else ""
            visits = sum(len(v) for v in r.times.values())
            cpu = f"{r.cpu:6.2f} {1000 * r.cpu / max(visits, 1):5.0f}" if i == 0 else f"{'':6} {'':5}"
            print(f"{r.scenario if i == 0 else '':9} {r.clients if i == 0 else '':>7} {kind:8} {len(values):>6} "
                  f"{errs:>6} {p50:7.2f} {p95:7.2f} {mx:7.2f} {ratio} {cpu}   {rss}")
    errors = [(r, e) for r in rows for e in r.errors]
    if errors:
        print(f"\nErrors ({len(errors)}):")
        for r, e in errors[:40]:
            print(f"  {r.scenario} x{r.clients}: {e}")
    if skipped:
        print("\nSkipped (time limit): " + ", ".join(skipped))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,8,30", help="client counts, comma-separated (1 is always run)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"some of {', '.join(SCENARIOS)}")
    ap.add_argument("--model", default="at-cas")
    ap.add_argument("--attack", default="pgd")
    ap.add_argument("--steps", type=int, default=20, help="attack steps of every Attack Lab visit")
    ap.add_argument("--clicks", type=int, default=10, help="images per visitor in the clicks scenario")
    ap.add_argument("--rounds", type=int, default=1, help="clicks: go through one's images this many times "
                    "(from the second round on every result is stored: what memory does without new results)")
    ap.add_argument("--lecture-query", default="step=6")
    ap.add_argument("--stats-query", default="", help="query string of the Channel statistics visit "
                    "(default: the page's defaults), e.g. 'models=at-cas&n=32&steps=5'")
    ap.add_argument("--mix-delay", type=float, default=2.0, help="seconds between the statistics click and the attacks")
    ap.add_argument("--visit-timeout", type=float, default=300.0)
    ap.add_argument("--time-limit", type=float, default=1800.0, help="seconds for the whole run")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    counts = sorted({1, *(int(c) for c in args.clients.split(",") if c.strip())})
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if max(counts) > 200:
        ap.error("at most 200 clients")
    deadline = time.monotonic() + args.time_limit
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CAS_RUNS_DIR": str(Path(tmp) / "runs")}
        for scenario in scenarios:
            for n in counts:
                if time.monotonic() > deadline - 30:
                    skipped.append(f"{scenario} x{n}")
                    continue
                row = Row(scenario, n)
                log = Path(tmp) / f"{scenario}-{n}.log"
                print(f"{scenario} x{n} ...", flush=True)
                try:
                    with serve_process(env, log) as (url, proc):
                        asyncio.run(run_row(url, proc.pid, args, row, deadline))
                except Exception as e:  # noqa: BLE001 - a row that could not run is reported, the rest go on
                    row.errors.append(f"{type(e).__name__}: {e}")
                row.errors += log_errors(log)
                rows.append(row)
    report(rows, skipped, args.steps)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))


if __name__ == "__main__":
    main()
