"""Exposure and limits: the server answers this machine unless told otherwise, server paths are off
when it is open to the network, nothing is fetched, every training setting is bounded, and only a
few training jobs run at once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from app import jobs
from app.common import models
from cas.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


# -- exposure ------------------------------------------------------------------------------------------

def test_streamlit_config_serves_this_machine_and_sends_nothing():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["showEmailPrompt"] is False


def test_launcher_defaults_to_localhost_wherever_it_starts(tmp_path, monkeypatch):
    from app import serve

    monkeypatch.chdir(tmp_path)  # no config file here or in the home folder
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    args = serve.streamlit_args(["--server.port", "9999"])
    assert args[args.index("--server.address") + 1] == "localhost"
    assert args[args.index("--browser.gatherUsageStats") + 1] == "false"
    opened = serve.streamlit_args(["--server.address", "0.0.0.0"])  # the user asked for the network
    assert opened.count("--server.address") == 1 and opened[-1] == "0.0.0.0"
    # open to the network: visitors see an error's type, not a traceback naming the server's files
    assert opened[opened.index("--client.showErrorDetails") + 1] == "type"
    assert "--client.showErrorDetails" not in args
    chosen = serve.streamlit_args(["--server.address", "0.0.0.0", "--client.showErrorDetails", "full"])
    assert chosen.count("--client.showErrorDetails") == 1
    assert serve.streamlit_args(["--server.address=10.0.0.5"]).count("--server.address") == 0
    monkeypatch.setenv("STREAMLIT_SERVER_ADDRESS", "0.0.0.0")
    assert "--server.address" not in serve.streamlit_args([])


def test_launcher_never_asks_the_internet_for_its_address(monkeypatch):
    from streamlit import net_util
    from streamlit.web import cli

    from app import serve

    monkeypatch.setattr(net_util, "get_external_ip", net_util.get_external_ip)
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(sys, "argv", ["serve"])
    with pytest.raises(SystemExit):
        serve.main()
    assert net_util.get_external_ip() is None


@pytest.fixture
def address(monkeypatch):
    """Set streamlit's server.address for one test (restored afterwards)."""
    before = streamlit.config.get_option("server.address")
    monkeypatch.delenv(models.ALLOW_PATHS_VARIABLE, raising=False)
    yield lambda value: streamlit.config.set_option("server.address", value)
    streamlit.config.set_option("server.address", before)


def test_server_paths_only_for_a_local_server_or_when_allowed(address, monkeypatch):
    for value, allowed in [("localhost", True), ("127.0.0.1", True), ("0.0.0.0", False), ("", False),
                           ("192.168.1.20", False)]:
        address(value)
        assert models.server_paths_allowed() is allowed, value
    monkeypatch.setenv(models.ALLOW_PATHS_VARIABLE, "1")
    assert models.server_paths_allowed()
    address("localhost")
    monkeypatch.setenv(models.ALLOW_PATHS_VARIABLE, "0")
    assert not models.server_paths_allowed()


def test_the_model_picker_hides_server_paths_on_an_open_server(tmp_path, monkeypatch, address):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    address("0.0.0.0")
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.query_params["model"] = "__path__"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Checkpoint file on this machine…" not in at.selectbox(key="lab_model").options
    assert "turned off" in "\n".join(i.value for i in at.info)
    assert not [t for t in at.text_input if t.key == "lab_ckpt"]


def test_no_fonts_or_scripts_are_fetched_from_the_internet():
    pattern = re.compile(r"fonts\.googleapis|fonts\.gstatic|cdn\.|unpkg\.com|jsdelivr|<script|@import\s+url",
                         re.IGNORECASE)
    files = list((ROOT / "app").rglob("*.py")) + list((ROOT / ".streamlit").glob("*.toml"))
    assert files and not [f.name for f in files if pattern.search(f.read_text())]


# -- training settings are bounded ---------------------------------------------------------------------

@pytest.mark.parametrize("setting,message", [
    ({"epochs": 10**6}, "epochs must be a whole number from 1 to 1000"),
    ({"batch_size": 0}, "batch_size"),
    ({"width": 4096}, "width"),
    ({"steps": 10**4}, "steps must be a whole number from 1 to 100"),
    ({"eval_steps": 0}, "eval_steps"),
    ({"eval_batch_size": 10**6}, "eval_batch_size"),
    ({"train_subset": 10**7}, "train_subset"),
    ({"val_size": 20_000}, "val_size"),
    ({"lr": float("nan")}, "lr must be a number"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"epsilon": float("inf")}, "epsilon"),
    ({"step_size": -1.0}, "step_size"),
    ({"beta": 1e9}, "beta"),
    ({"aux_weight": float("nan")}, "aux_weight"),
    ({"momentum": 1.0}, "momentum"),
    ({"seed": -1}, "seed"),
    ({"width": True}, "width"),
    ({"epochs": "10"}, "epochs"),
    ({"cas": "yes"}, "cas must be true or false"),
    ({"schedule": "cyclic"}, "schedule must be one of"),
    ({"description": "x" * 501}, "description"),
])
def test_training_settings_are_bounded(setting, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**setting).validate()


def test_the_train_pages_limits_are_within_the_library_bounds():
    largest = TrainConfig(width=128, epochs=200, train_subset=50_000, batch_size=2048, lr=2.0, epsilon=32.0,
                          steps=20, val_size=10_000, eval_steps=50, description="x" * 200)
    assert largest.validate() is largest
    from_json = TrainConfig.from_dict(json.loads(json.dumps(asdict(TrainConfig(epsilon=8)))))
    assert from_json.validate() is from_json


# -- at most MAX_RUNNING training jobs -------------------------------------------------------------------

def _pretend_running(runs: Path, name: str) -> subprocess.Popen:
    """A sleeping process that looks like the trainer of run ``name`` (its command line names
    cas.train and the run folder), with the job record the app would have written."""
    out = runs / name
    out.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "cas.train", str(out)])
    (out / "job.json").write_text(json.dumps({"name": name, "pid": proc.pid, "started": time.time(),
                                              "config": asdict(TrainConfig(width=4, epochs=1))}))
    deadline = time.monotonic() + 30
    while not jobs.pid_alive(proc.pid, out) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the new process shows its command line
    return proc


def test_no_more_than_two_training_jobs_at_once(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("CAS_RUNS_DIR", str(runs))
    assert jobs.MAX_RUNNING == 2
    sleepers = [_pretend_running(runs, n) for n in ("a", "b")]
    try:
        assert jobs.running_names() == ["a", "b"]
        problem, _ = jobs.start_problem("c")
        assert "at most 2 may run at once" in problem and "a, b" in problem
        with pytest.raises(jobs.JobLimitError, match="at most 2"):
            jobs.start("c", TrainConfig(width=4, epochs=1))
        assert not (runs / "c").exists()
        sleepers[0].kill()
        sleepers[0].wait(timeout=30)
        assert jobs.running_names() == ["b"] and jobs.start_problem("c") == (None, None)
    finally:
        for p in sleepers:
            p.kill()
            p.wait(timeout=30)


def test_the_train_page_refuses_a_third_job(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("CAS_RUNS_DIR", str(runs))
    sleepers = [_pretend_running(runs, n) for n in ("a", "b")]
    try:
        at = AppTest.from_file(str(ROOT / "app" / "views" / "train.py"), default_timeout=60)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert "at most 2 may run at once" in "\n".join(e.value for e in at.error)
        assert at.button(key="btn_train_start").disabled
    finally:
        for p in sleepers:
            p.kill()
            p.wait(timeout=30)
