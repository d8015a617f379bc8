"""The trainer on real CIFAR-10 images (small subsets, CPU): every method, resume, stop, DDP, learning."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from cas import load_checkpoint, read_card
from cas.train import TrainConfig, build_parser, lr_factor, read_log, train

TINY = dict(width=4, epochs=1, batch_size=64, lr=0.05, train_subset=256, val_size=64, steps=2,
            eval_steps=2, device="cpu", progress=False)


@pytest.fixture(autouse=True)
def _needs_data(cifar_test):
    pass


@pytest.mark.parametrize("method", ["std", "at", "trades", "mart"])
@pytest.mark.parametrize("with_cas", [True, False])
def test_one_short_epoch_of_each_method(method, with_cas, tmp_path):
    cfg = TrainConfig(method=method, cas=with_cas, out=str(tmp_path / "run"), **TINY)
    best = train(cfg)
    (rec,) = read_log(tmp_path / "run" / "log.jsonl")
    for key in ("loss", "train_acc", "heldout_clean", "heldout_robust", "seconds", "images_per_s"):
        assert key in rec and rec[key] == rec[key]  # present and not NaN
    assert rec["robust_attack"] == ("soft_mask_pgd2" if with_cas else "pgd2")
    model, card = load_checkpoint(best)
    assert model.has_cas == with_cas and card["method"] == method and card["best_epoch"] == 1
    assert card["command"].startswith("python -m cas.train") and f"--method {method}" in (
        card["command"] + " --method at")  # 'at' is the default and left out of the command


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    base = TrainConfig(method="at", cas=True, **{**TINY, "epochs": 2})
    train(replace(base, out=str(tmp_path / "full")))
    # the same run, interrupted after its first epoch (a crash leaves state.pt of epoch 1) ...
    first = replace(base, out=str(tmp_path / "cut"))
    _run_one_epoch_then_crash(first)
    # ... and resumed
    train(replace(first, resume=True))
    a = torch.load(tmp_path / "full" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_log(tmp_path / "cut" / "log.jsonl")] == [1, 2]


def _run_one_epoch_then_crash(cfg):
    """Train, killing the process's work right after the first epoch's checkpoint is written."""
    class Crash(Exception):
        pass

    def on_epoch(record):
        raise Crash

    with pytest.raises(Crash):
        train(cfg, on_epoch=on_epoch)


def test_resume_refuses_a_different_setup(tmp_path):
    cfg = TrainConfig(method="std", cas=False, out=str(tmp_path / "r"), **TINY)
    train(cfg)
    with pytest.raises(ValueError, match="width differs"):
        train(replace(cfg, width=8, resume=True))


def test_stop_file_ends_the_run_keeping_the_last_epoch(tmp_path):
    out = tmp_path / "s"
    cfg = TrainConfig(method="std", cas=False, out=str(out), **{**TINY, "epochs": 3})

    def stop_after_first(record):
        (out / "STOP").touch()

    train(cfg, on_epoch=stop_after_first)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert lines[0]["epoch"] == 1 and lines[-1]["event"] == "stopped" and len(read_log(out / "log.jsonl")) == 1
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1
    train(replace(cfg, resume=True))  # resuming clears STOP and finishes
    assert [r["epoch"] for r in read_log(out / "log.jsonl")] == [1, 2, 3]


def test_a_small_cas_model_learns_on_real_images(tmp_path):
    cfg = TrainConfig(method="std", cas=True, width=8, epochs=3, batch_size=128, lr=0.1, train_subset=4096,
                      val_size=500, eval_steps=2, device="cpu", progress=False, out=str(tmp_path / "l"))
    train(cfg)
    log = read_log(tmp_path / "l" / "log.jsonl")
    print("held-out clean accuracy per epoch:", [r["heldout_clean"] for r in log])
    assert log[-1]["heldout_clean"] > 25.0  # chance is 10%
    assert read_card(tmp_path / "l" / "best.safetensors")["heldout"]["heldout_clean"] == max(
        r["heldout_clean"] for r in log)


def test_lr_schedules():
    cfg = TrainConfig(schedule="onecycle", warmup=0.25)
    assert lr_factor(cfg, 0, 100) == 0 and lr_factor(cfg, 25, 100) == pytest.approx(1)
    assert lr_factor(cfg, 100, 100) == pytest.approx(0, abs=1e-9)
    ms = TrainConfig(schedule="multistep")
    assert [lr_factor(ms, s, 100) for s in (0, 80, 95)] == [1.0, 0.1, 0.01]


def test_cli_is_built_from_the_dataclass():
    a = build_parser().parse_args(["--method", "trades", "--no-cas", "--epsilon", "4", "--beta", "6"])
    cfg = TrainConfig(**vars(a))
    assert cfg.method == "trades" and cfg.cas is False and cfg.epsilon == 4.0 and cfg.beta == 6.0
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="fast").validate()


def test_distributed_training_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cas.train", "--method", "at", "--cas", "--width", "4", "--epochs", "1", "--batch-size", "32",
           "--train-subset", "256", "--val-size", "32", "--steps", "1", "--eval-steps", "1",
           "--device", "cpu", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = read_log(out / "log.jsonl")
    assert rec["epoch"] == 1 and "heldout_clean" in rec
    # each rank trained on its own half: 2 ranks x 4 steps x 32 images
    assert rec["images"] == 256
    assert load_checkpoint(out / "best.safetensors")[0].has_cas


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_best_epoch(tmp_path):
    """A learning rate far too high makes the loss NaN: the trainer says so, stops at once, logs a
    'diverged' event (no 'finished') and keeps the last good best epoch."""
    cfg = TrainConfig(method="at", cas=True, out=str(tmp_path / "d"), **{**TINY, "epochs": 4, "lr": 1e6})
    with pytest.raises(ValueError, match="DIVERGED"):
        train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "d" / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "diverged" and not any(r.get("event") == "finished" for r in lines)
    assert len(lines) <= 5 and "DIVERGED" in lines[-2]["warning"]
