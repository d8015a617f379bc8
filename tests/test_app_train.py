"""The Train page and its background jobs (``app/jobs.py``).

The page is driven through Streamlit's AppTest with ``CAS_RUNS_DIR`` pointing at a temporary folder.
Real training processes are started with a tiny configuration (width 4, 256 images, one PGD step);
waits poll the run's files with generous deadlines, because the machine may be busy. Every process a
test starts is killed, by its pid, when the test ends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import jobs
from cas.train import TrainConfig, cli_args, read_log

ROOT = Path(__file__).resolve().parent.parent

PAGE = str(ROOT / "app" / "views" / "train.py")
TINY = {"width": 4, "train_subset": 256, "batch_size": 16, "steps": 1, "val_size": 64, "eval_steps": 1}


def _kill(proc: subprocess.Popen) -> None:
    """End a process this test file started, and its process group (the trainer's own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty runs folder; afterwards, every job started meanwhile is killed by its pid."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("CAS_RUNS_DIR", str(folder))
    before = set(jobs._children)
    try:
        yield folder
    finally:
        for pid in set(jobs._children) - before:
            _kill(jobs._children.pop(pid))


@pytest.fixture
def training_runs(runs, cifar_test):
    """``runs``, for tests that train (skipped when CIFAR-10 is not available)."""
    return runs


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert_clean(at)
    return at


# -- jobs.py on its own ----------------------------------------------------------------------------------

def _fake_run(runs: Path, name: str, pid: int, started: float, log: list[dict] | None = None,
              epochs: int = 3) -> Path:
    """A run folder as a job would leave it: job.json and optionally a log."""
    out = runs / name
    out.mkdir(parents=True)
    cfg = TrainConfig(method="at", cas=True, arch="resnet18", width=4, epochs=epochs, batch_size=16, lr=0.1,
                      epsilon=8, steps=1, train_subset=256, val_size=64, eval_steps=1)
    (out / "job.json").write_text(json.dumps({"name": name, "pid": pid, "config": asdict(cfg), "started": started,
                                              "command": ["python", "-m", "cas.train", *cli_args(cfg)]}))
    if log is not None:
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return out


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


EPOCH = {"epoch": 1, "loss": 2.0, "train_acc": 20.0, "heldout_clean": 15.0, "heldout_robust": 10.0, "best_epoch": 1}


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "a\\b", "with space", "..", "x" * 65, "é"])
def test_bad_names_are_refused(name):
    assert jobs.name_problem(name)


@pytest.mark.parametrize("name", ["run-1", "AT_cas_w8", "x"])
def test_good_names_pass(name):
    assert jobs.name_problem(name) is None


def test_dead_process_without_final_event_is_failed(runs):
    _fake_run(runs, "gone", _dead_pid(), time.time() - 5, log=[EPOCH])
    assert jobs.status("gone") == "failed"
    _fake_run(runs, "gone-early", _dead_pid(), time.time() - 5)  # died before its first epoch
    info = jobs.run_info("gone-early")
    assert info.status == "failed" and info.done == 0 and not info.can_resume


def test_finished_and_stopped_events(runs):
    _fake_run(runs, "done", _dead_pid(), time.time() - 5, log=[EPOCH, {"event": "finished", "epochs": 1}])
    assert jobs.status("done") == "finished"
    out = _fake_run(runs, "paused", _dead_pid(), time.time() - 5,
                    log=[EPOCH, {"event": "stopped", "epoch": 2, "completed_epochs": 1}])
    (out / "state.pt").write_bytes(b"")
    info = jobs.run_info("paused")
    assert (info.status, info.done, info.total_epochs, info.can_resume) == ("stopped", 1, 3, True)
    problem, existing = jobs.start_problem("paused")
    assert "Resume it" in problem and existing.name == "paused"


def test_event_older_than_the_job_does_not_count(runs):
    """A resume that dies at once leaves the previous attempt's 'stopped' line: that is a failure."""
    out = _fake_run(runs, "retry", _dead_pid(), time.time(), log=[EPOCH, {"event": "stopped"}])
    old = time.time() - 60
    os.utime(out / "log.jsonl", (old, old))
    assert jobs.status("retry") == "failed"


def test_running_needs_a_live_trainer_process(runs):
    out = runs / "live"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    trainer_like = subprocess.Popen(sleeper + ["cas.train", str(out)])
    other = subprocess.Popen(sleeper)
    try:
        _fake_run(runs, "live", trainer_like.pid, time.time())
        assert jobs.status("live") == "running"
        problem, _ = jobs.start_problem("live")
        assert "already running" in problem
        _fake_run(runs, "recycled", other.pid, time.time())  # a live pid, but not a trainer
        assert jobs.status("recycled") == "failed"
        _kill(trainer_like)
        assert jobs.status("live") == "failed"
    finally:
        _kill(trainer_like)
        _kill(other)


def test_stop_writes_the_stop_file(runs):
    _fake_run(runs, "s", _dead_pid(), time.time())
    jobs.stop("s")
    assert (runs / "s" / "STOP").exists()


# -- the page --------------------------------------------------------------------------------------------

def test_page_refuses_bad_and_taken_names(runs):
    at = page()
    assert "No runs yet" in texts(at.info)
    at.text_input("train_name").set_value("../evil").run()
    assert_clean(at)
    assert "cannot contain '/'" in texts(at.error)
    assert at.button("btn_train_start").disabled
    at.text_input("train_name").set_value("two words").run()
    assert "only letters, digits" in texts(at.error)
    _fake_run(runs, "taken", _dead_pid(), time.time() - 5, log=[EPOCH, {"event": "finished", "epochs": 1}])
    at.text_input("train_name").set_value("taken").run()
    assert "already exists" in texts(at.error)
    assert at.button("btn_train_start").disabled
    at.text_input("train_name").set_value("fresh").run()
    assert not at.error and not at.button("btn_train_start").disabled
    assert "taken" in texts(at.markdown)  # the existing run is listed and shown


def test_page_starts_stops_and_resumes_a_run(training_runs, wait_for):
    import cas

    at = page()
    at.text_input("train_name").set_value("tiny")
    for key, value in TINY.items():
        at.number_input("train_" + key).set_value(value)
    at.number_input("train_epochs").set_value(4)
    at.button("btn_train_start").click().run()
    assert_clean(at)
    assert "Started run 'tiny'" in texts(at.success), texts(at.error)
    out = training_runs / "tiny"
    job = jobs.read_job(out)
    assert job["command"][1:3] == ["-m", "cas.train"] and "--resume" not in job["command"]
    assert job["command"][-3:] == ["--out", str(out), "--no-progress"]
    assert at.text_input("train_name").value != "tiny"  # a fresh name is suggested for the next run

    # the log advances; stop from the page as soon as one epoch is saved
    wait_for(lambda: read_log(out / "log.jsonl"), "the first epoch", "tiny")
    at.run()
    assert_clean(at)
    assert "tiny: running" in texts(at.markdown)
    at.button("btn_train_stop").click().run()
    assert_clean(at)
    assert (out / "STOP").exists()
    wait_for(lambda: jobs.status("tiny") == "stopped", "the run to stop", "tiny")
    kept = read_log(out / "log.jsonl")
    assert 1 <= len(kept) < 4
    assert (out / "best.safetensors").exists()
    assert "tiny" in [m["name"] for m in cas.available_models()]

    # resume from the page: the same arguments plus --resume, continuing the log
    at.run()
    assert_clean(at)
    assert "tiny: stopped" in texts(at.markdown)
    at.button("btn_train_resume").click().run()
    assert_clean(at)
    job = jobs.read_job(out)
    assert "--resume" in job["command"]
    wait_for(lambda: jobs.status("tiny") == "finished", "the resumed run to finish", "tiny")
    log = read_log(out / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[:len(kept)] == kept  # continued, not started over
    at.run()
    assert_clean(at)
    assert "tiny: finished" in texts(at.markdown)
    assert "appears in every model picker" in texts(at.success)
    assert "python -m cas.train" in texts(at.code)
    assert len(at.get("plotly_chart")) == 1
