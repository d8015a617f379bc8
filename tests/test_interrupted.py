"""Interrupted work: a trainer killed with SIGKILL resumes with nothing lost or corrupted, every file
is written atomically, and a restarted server shows the runs again."""
from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import cas
from app import jobs
from cas import checkpoint, load_checkpoint
from cas import train as trainer
from cas.train import TrainConfig, read_log

TINY = dict(method="at", cas=True, width=4, epochs=2, batch_size=16, lr=0.05, train_subset=512, val_size=32,
            steps=1, eval_steps=1, eval_batch_size=32)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty runs folder; every job started meanwhile is killed by its pid afterwards."""
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "runs"))
    before = set(jobs._children)
    try:
        yield tmp_path / "runs"
    finally:
        for pid in set(jobs._children) - before:
            proc = jobs._children.pop(pid)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def no_temporary_files(folder: Path) -> bool:
    return not [f.name for f in folder.iterdir() if f.name.endswith(".tmp")]


# -- a trainer killed mid-epoch ----------------------------------------------------------------------------

@pytest.mark.slow  # a trainer process of its own: about 15 s on a busy 2-core machine, most of it start-up
def test_sigkill_mid_epoch_then_resume_after_a_server_restart(runs, cifar_test, wait_for):
    cfg = TrainConfig(**TINY)
    job = jobs.start("killed", cfg)
    out = runs / "killed"
    proc = jobs._children[job["pid"]]
    wait_for(lambda: len(read_log(out / "log.jsonl")) >= 1, "the first epoch", "killed", interval=0.02)
    os.killpg(job["pid"], signal.SIGKILL)  # no chance to clean up: in the second epoch's batches
    proc.wait(timeout=30)
    assert len(read_log(out / "log.jsonl")) < cfg.epochs, "the run finished before it could be killed"

    # what the kill left: the last finished epoch, whole
    state = torch.load(out / "state.pt", weights_only=True)
    done = state["epoch"]
    assert done >= 1 and [r["epoch"] for r in read_log(out / "log.jsonl")] == list(range(1, done + 1))
    assert load_checkpoint(out / "best.safetensors")[0].has_cas
    assert no_temporary_files(out)

    # a restarted server knows no child processes: it reads everything from the run's folder
    jobs._children.clear()
    (info,) = jobs.list_runs()
    assert info.name == "killed" and info.status == "failed" and info.can_resume and info.done == done

    # resumed with the run's own settings (in this process, to keep the test short)
    trainer.train(replace(jobs.run_config("killed"), resume=True))
    assert jobs.status("killed") == "finished"
    log = read_log(out / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2]
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1]) == {"event": "finished", "epochs": 2}
    _, card = load_checkpoint(out / "best.safetensors")
    assert card["best_epoch"] == max(log, key=lambda r: r["heldout_robust"])["epoch"]
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 2
    assert no_temporary_files(out)

    jobs._children.clear()  # and once more after a restart: the finished run and its checkpoint
    (info,) = jobs.list_runs()
    assert info.status == "finished" and info.done == 2 and not info.can_resume
    assert info.best_checkpoint == out / "best.safetensors"
    assert [m["name"] for m in cas.available_models() if m["source"] == "run"] == ["killed"]


def test_a_kill_between_the_state_and_the_log_line_loses_no_epoch(tmp_path, monkeypatch, cifar_test):
    """The state file is written before the epoch's log line; a kill in between must not leave a gap."""
    cfg = TrainConfig(out=str(tmp_path / "r"), device="cpu", progress=False,
                      **{**TINY, "train_subset": 256})

    class Killed(Exception):
        pass

    real_append = trainer._append

    def append_then_die(path, record):
        if record.get("epoch") == 1 and "event" not in record:
            raise Killed
        real_append(path, record)

    monkeypatch.setattr(trainer, "_append", append_then_die)
    with pytest.raises(Killed):
        trainer.train(cfg)
    monkeypatch.setattr(trainer, "_append", real_append)
    assert torch.load(tmp_path / "r" / "state.pt", weights_only=True)["epoch"] == 1
    trainer.train(replace(cfg, resume=True))
    assert [r["epoch"] for r in read_log(tmp_path / "r" / "log.jsonl")] == [1, 2]


# -- atomic writes ---------------------------------------------------------------------------------------

class Interrupted(Exception):
    pass


def _dies_half_way(real):
    """A writer that writes a few bytes of the file and then dies."""
    def write(*args, **kwargs):
        path = next(a for a in args if isinstance(a, (str, Path)))
        Path(path).write_bytes(b"\x00\x01half")
        raise Interrupted
    return write


def test_checkpoint_and_card_writes_are_atomic(tmp_path, monkeypatch):
    model = cas.create_model("resnet18", width=4)
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", model, cas.make_card(model, method="at"))
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint, "save_file", _dies_half_way(checkpoint.save_file))
    with pytest.raises(Interrupted):
        checkpoint.save_checkpoint(path, model)
    with pytest.raises(Interrupted):
        checkpoint.update_card(path, accuracy={"clean": 1.0})
    assert path.read_bytes() == before and load_checkpoint(path)[1]["method"] == "at"
    assert no_temporary_files(tmp_path)


def test_job_record_writes_are_atomic(runs, monkeypatch):
    out = runs / "r"
    out.mkdir(parents=True)
    jobs._write_job(out, {"name": "r", "pid": None})
    real = Path.write_text

    def dies(self, text, *a, **kw):
        real(self, text[:5])
        raise Interrupted

    monkeypatch.setattr(Path, "write_text", dies)
    with pytest.raises(Interrupted):
        jobs._write_job(out, {"name": "r", "pid": 1, "config": {}})
    monkeypatch.undo()
    assert jobs.read_job(out) == {"name": "r", "pid": None, "started": None}
    assert no_temporary_files(out)


def test_damaged_job_records_do_not_break_the_run_list(runs):
    for name, text in [("torn", '{"name": "torn", "pid": 12'), ("odd", json.dumps(
            {"pid": [1], "started": "yesterday", "config": "x", "command": 3})), ("list", "[1, 2]")]:
        (runs / name).mkdir(parents=True)
        (runs / name / "job.json").write_text(text)
    infos = {i.name: i for i in jobs.list_runs()}
    assert set(infos) == {"torn", "odd", "list"}
    assert infos["odd"].status == "failed" and infos["torn"].status == "unknown"
