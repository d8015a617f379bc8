"""Training runs as background jobs: start, stop, resume, and tell what state each run is in.

A job is ``python -m cas.train ... --out <runs>/<name> --no-progress`` started in its own session, so
it keeps running when the page is reloaded or closed. Everything about it lives on disk, in the run's
folder, never in the browser session:

* ``job.json``: the process id, the run's settings (a :class:`cas.train.TrainConfig`), the full command
  and the start time;
* ``train.out``: what the trainer printed (its error message, if it failed);
* the trainer's own files: ``log.jsonl``, ``state.pt``, ``best.safetensors``, ``config.json``;
* ``STOP``: created to ask the trainer to stop after its current batch.

A run's status is read from these files and from whether its process is still alive:
``running``, ``finished``, ``stopped``, ``failed`` or ``unknown`` (a folder not started from the app,
for example a run trained on the command line, with neither a live job nor a final log event).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cas import runs
from cas.checkpoint import atomic_write, runs_dir
from cas.runs import RunFolder
from cas.train import TrainConfig, cli_args, read_log

ROOT = Path(__file__).resolve().parent.parent  # the trainer runs from the repository root
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
NAME_MAX = 64
# the run folder's file names (cas.runs names every file of a run)
JOB_FILE, OUTPUT_FILE, LOG_FILE, STOP_FILE = runs.JOB, runs.OUTPUT, runs.LOG, runs.STOP
STATUSES = ("running", "finished", "stopped", "failed", "unknown")
MAX_RUNNING = 2  # training jobs running at once (each uses every core it is given)
LOCK_FILE = ".jobs.lock"

# Popen objects of the jobs this process started, by pid: polling them collects finished children,
# so they do not linger as zombie processes while the app keeps running.
_children: dict[int, subprocess.Popen] = {}


def run_dir(name: str) -> Path:
    """The folder of the run called ``name``."""
    return runs_dir() / name


# -- names and settings --------------------------------------------------------------------------------

def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run's folder, or None if its form is fine (existing runs are not
    checked here; see :func:`start_problem`)."""
    if not name:
        return "Give the run a name."
    if "/" in name or "\\" in name or name in (".", ".."):
        return "A run name cannot contain '/' or '\\': it names one folder inside the runs folder."
    if len(name) > NAME_MAX:
        return f"A run name can have at most {NAME_MAX} characters."
    if not NAME_PATTERN.fullmatch(name):
        return "A run name may contain only letters, digits, '-' and '_' (no spaces)."
    return None


def settings_problem(cfg: TrainConfig) -> str | None:
    """What the trainer would refuse in these settings (its own checks), or None."""
    try:
        cfg.validate()
    except ValueError as e:
        return f"These settings cannot be used: {e}."
    return None


# -- processes -----------------------------------------------------------------------------------------

def pid_alive(pid: int | None, out: Path | None = None) -> bool:
    """Whether ``pid`` is a live trainer process (for the run folder ``out``, if given). Where
    ``/proc`` exists, its command line must name ``cas.train`` (and the folder), so a recycled pid
    is not mistaken for the job."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True  # started by this process and not finished (its command line may not show yet)
        _children.pop(pid, None)
        return False
    proc = Path("/proc")
    if proc.is_dir():
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        words = [w.decode(errors="replace") for w in cmdline]
        if "cas.train" not in words:
            return False  # another program, or a finished process not yet collected (empty line)
        return out is None or str(out) in words
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_job(out: Path) -> dict | None:
    """The run's ``job.json`` (None if it was not started from the app or the file is unreadable).
    Fields of the wrong type (a damaged or edited file) are dropped."""
    try:
        job = json.loads((Path(out) / JOB_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(job, dict):
        return None
    if isinstance(job.get("pid"), bool) or not isinstance(job.get("pid"), int):
        job["pid"] = None
    if isinstance(job.get("started"), bool) or not isinstance(job.get("started"), (int, float)):
        job["started"] = None
    for key, kind in (("config", dict), ("command", list), ("started_text", str)):
        if key in job and not isinstance(job[key], kind):
            del job[key]
    return job


def _write_job(out: Path, job: dict) -> None:
    atomic_write(out / JOB_FILE, lambda tmp: Path(tmp).write_text(json.dumps(job, indent=2)))


class JobLimitError(ValueError):
    """Too many training jobs are running; the message names them."""


def limit_message(running: list[str]) -> str:
    return (f"{len(running)} training runs are already running ({', '.join(running)}); at most {MAX_RUNNING} "
            "may run at once. Wait for one to finish, or stop one, then start again.")


class _jobs_lock:
    """An exclusive lock on the runs folder, held across processes (several app servers may share it)."""

    def __enter__(self):
        root = runs_dir()
        root.mkdir(parents=True, exist_ok=True)
        self.fh = open(root / LOCK_FILE, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def running_names() -> list[str]:
    """Names of the runs whose trainer process is alive now."""
    root = runs_dir()
    if not root.is_dir():
        return []
    names = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and name_problem(d.name) is None:
            job = read_job(d)
            if job and pid_alive(job.get("pid"), d):
                names.append(d.name)
    return names


def start(name: str, cfg: TrainConfig, resume: bool = False) -> dict:
    """Start the trainer for run ``name`` with settings ``cfg`` in the background; returns the job
    record written to ``job.json``. With ``resume`` the trainer continues from the run's last finished
    epoch. The settings become command-line arguments here, where the process starts, and nowhere else.
    Raises :class:`JobLimitError` when :data:`MAX_RUNNING` other runs are running, and ValueError for
    settings the trainer would refuse."""
    out = run_dir(name)
    with _jobs_lock():  # one start at a time, so that two clicks cannot both pass the limit
        others = [n for n in running_names() if n != name]
        if len(others) >= MAX_RUNNING:
            raise JobLimitError(limit_message(others))
        return _start(name, out, cfg, resume)


def _start(name: str, out: Path, cfg: TrainConfig, resume: bool) -> dict:
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)
    cfg = replace(cfg, out=str(out), progress=False, resume=resume)
    command = [sys.executable, "-m", "cas.train", *cli_args(cfg), *(["--resume"] if resume else []),
               "--out", str(out), "--no-progress"]
    started = time.time()
    with open(out / OUTPUT_FILE, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'} ===\n".encode())
        log.flush()
        proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _children[proc.pid] = proc
    job = {"name": name, "pid": proc.pid, "config": asdict(cfg), "resume": resume, "command": command,
           "started": started, "started_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))}
    _write_job(out, job)
    return job


def stop(name: str) -> None:
    """Ask the run's trainer to stop: it finishes its current batch, logs 'stopped' and exits, keeping
    its last finished epoch (resume continues from there)."""
    (run_dir(name) / STOP_FILE).touch()


def run_config(name: str) -> TrainConfig | None:
    """The settings run ``name`` was started with (from ``job.json``, else from the trainer's
    ``config.json``), or None when neither is there or readable."""
    out = run_dir(name)
    job = read_job(out)
    try:
        if job and isinstance(job.get("config"), dict):
            return TrainConfig.from_dict(job["config"])
        return TrainConfig.from_dict(json.loads(RunFolder(out).config.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError):
        return None


def resume(name: str) -> dict:
    """Start the run again with its own settings, continuing from its last finished epoch."""
    cfg = run_config(name)
    if cfg is None:
        raise ValueError(f"run {name!r} has no record of its settings (job.json or config.json)")
    return start(name, cfg, resume=True)


# -- status --------------------------------------------------------------------------------------------

def _last_event(out: Path, since: float | None) -> str | None:
    """The log's last 'stopped'/'finished' event; with ``since`` (a start time), only if the log was
    written after it (an event of an earlier attempt says nothing about the current one)."""
    log = out / LOG_FILE
    try:
        if since is not None and log.stat().st_mtime < since:
            return None
        lines = log.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "event" in record:
            return record["event"]
        if "epoch" in record:
            return None  # an epoch after the last event: that event belonged to an earlier attempt
    return None


def status(name: str) -> str:
    """One of :data:`STATUSES` for run ``name`` (see the module's description)."""
    out = run_dir(name)
    job = read_job(out)
    if job and pid_alive(job.get("pid"), out):
        return "running"
    event = _last_event(out, job.get("started") if job else None)
    if event in ("finished", "stopped"):
        return event
    return "failed" if job else "unknown"


def output_tail(name: str, lines: int = 25) -> str:
    """The last lines the run's trainer printed (``train.out``)."""
    try:
        text = (run_dir(name) / OUTPUT_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class RunInfo:
    """What the app shows about one run."""

    name: str
    path: Path
    status: str
    records: list[dict] = field(default_factory=list)  # the log's epoch records
    total_epochs: int | None = None
    job: dict | None = None

    @property
    def done(self) -> int:
        return len(self.records)

    @property
    def best_checkpoint(self) -> Path | None:
        f = RunFolder(self.path).best
        return f if f.exists() else None

    @property
    def can_resume(self) -> bool:
        """Stopped or failed, with a saved epoch to continue from and epochs left."""
        return (self.status in ("stopped", "failed", "unknown") and RunFolder(self.path).state.exists()
                and (self.total_epochs is None or self.done < self.total_epochs))


def run_info(name: str) -> RunInfo:
    """Status, log records and planned epochs of run ``name``."""
    out = run_dir(name)
    job = read_job(out)
    cfg = run_config(name)
    return RunInfo(name, out, status(name), read_log(out / LOG_FILE), cfg.epochs if cfg else None, job)


def _last_change(d: Path) -> float:
    times = []
    for f in runs.RUN_FILES:
        try:
            times.append((d / f).stat().st_mtime)
        except OSError:  # absent, or removed meanwhile
            pass
    return max(times, default=0.0)


def list_runs() -> list[RunInfo]:
    """Every run folder (one holding a job record or trainer files), newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and name_problem(d.name) is None and RunFolder(d).is_run():
            found.append(d)
    found.sort(key=_last_change, reverse=True)
    return [run_info(d.name) for d in found]


def start_problem(name: str) -> tuple[str | None, RunInfo | None]:
    """Why a new run called ``name`` cannot start (None if it can), and the existing run of that name."""
    problem = name_problem(name)
    if problem:
        return problem, None
    out = run_dir(name)
    busy = [n for n in running_names() if n != name]
    limit = limit_message(busy) if len(busy) >= MAX_RUNNING else None
    if not out.exists():
        return limit, None
    info = run_info(name)
    if info.status == "running":
        return f"A run called '{name}' is already running. Stop it first, or choose another name.", info
    if limit:
        return limit, info
    if info.can_resume:
        return (f"A run called '{name}' already exists ({info.status} after {info.done} of "
                f"{info.total_epochs or '?'} epochs). Resume it, or choose another name.", info)
    if info.records or info.best_checkpoint:
        return (f"A run called '{name}' already exists ({info.status}, {info.done} epochs). "
                "Choose another name.", info)
    return None, info  # a folder with no finished epoch (for example a run that failed at once): reused
