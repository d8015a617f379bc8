"""An evaluation shared out among processes (torch.distributed, gloo on the CPU) prints what one process
would, and an evaluation stopped midway resumes from its partial results."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from cas import create_model
from cas.diagnose import CHEAP
from cas.robustness import EvalConfig, evaluate

ATTACKS = ["fgsm", "pgd", "authors_pgd", "authors_cw", "joint_pgd", "soft_mask_pgd"]


def _setup():
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (10, 3, 32, 32), generator=g, dtype=torch.uint8)
    with torch.no_grad():  # labels the model mostly gets right, so the attacks have work to do
        y = model(x.float() / 255).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    config = EvalConfig(ATTACKS, batch_size=3, device="cpu", amp=False, diagnose=CHEAP, diagnose_n=4,
                        overrides={a: {"steps": 3} for a in ("pgd", "joint_pgd", "soft_mask_pgd")})
    return model, x, y, config


def _summary(res) -> dict:
    inds = {a: [{k: v for k, v in i.items() if k != "seconds"} for i in v] for a, v in res.indicators.items()}
    return {"accuracy": res.accuracy, "counts": res.counts, "stderr": res.stderr, "flags": res.flags,
            "indicators": json.loads(json.dumps(inds, default=str)),
            "verdicts": {k: v.tolist() for k, v in res.verdicts.items()}}


def _worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, x, y, config = _setup()
        res = evaluate(model, x, y, config)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(_summary(res), f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_table(tmp_path):
    model, x, y, config = _setup()
    one = _summary(evaluate(model, x, y, config))
    assert set(one["indicators"]) == {"fgsm", "pgd", "authors_pgd", "authors_cw", "joint_pgd", "soft_mask_pgd"}
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        with open(f"{out}.{rank}") as f:
            assert json.load(f) == json.loads(json.dumps(one)), f"rank {rank}"


def test_per_image_seeds_make_the_start_independent_of_the_batch():
    model, x, y, config = _setup()
    a = evaluate(model, x, y, config)
    b = evaluate(model, x, y, EvalConfig(**{**vars(config), "batch_size": 5, "diagnose": ()}))
    for key in ("fgsm", "pgd20", "authors_pgd20", "joint_pgd20"):
        assert torch.equal(a.verdicts[key], b.verdicts[key]), key


def test_an_interrupted_evaluation_resumes_without_rerunning_finished_attacks(tmp_path, monkeypatch):
    import cas.robustness as rob

    model, x, y, config = _setup()
    full = evaluate(model, x, y, config, out=tmp_path)
    assert (tmp_path / "pgd.json").exists() and (tmp_path / "authors_cw.json").exists()
    for p in tmp_path.glob("*.json"):  # as if the run had stopped during the authors' PGD
        if p.stem not in ("clean", "fgsm", "pgd"):
            p.unlink()
    ran = []
    real = rob.run_attack
    monkeypatch.setattr(rob, "run_attack", lambda name, *a, **k: ran.append(name) or real(name, *a, **k))
    again = evaluate(model, x, y, config, out=tmp_path)
    assert again.resumed == ["clean", "fgsm", "pgd"]
    assert "pgd" not in ran and "fgsm" not in ran and "authors_pgd" in ran
    assert _summary(again) == _summary(full)
    # a partial result measured otherwise (another seed) is not reused
    other = evaluate(model, x, y, EvalConfig(**{**vars(config), "seed": 5}), out=tmp_path)
    assert other.resumed == []


@pytest.mark.parametrize("text", ["{", json.dumps({"model": "x"})])
def test_a_damaged_partial_result_is_run_again(tmp_path, text):
    model, x, y, config = _setup()
    config = EvalConfig(["fgsm"], batch_size=5, device="cpu", amp=False)
    first = evaluate(model, x, y, config, out=tmp_path)
    (tmp_path / "fgsm.json").write_text(text)
    again = evaluate(model, x, y, config, out=tmp_path)
    assert again.resumed == ["clean"] and again.accuracy == first.accuracy


def test_the_report_shows_each_attacks_indicators():
    from cas.cards import ModelCard
    from cas.report import render

    model, x, y, _ = _setup()
    res = evaluate(model, x, y, EvalConfig(["fgsm", "authors_pgd"], batch_size=5, device="cpu", amp=False,
                                           diagnose=CHEAP, diagnose_n=4))
    page = render(ModelCard.for_model(model, name="tiny"), res, 8 / 255)
    assert "Attack-failure indicators" in page and "Silent success" in page
    assert "FGSM" in page and "Authors&#x27; PGD-20" in page
