"""The evaluator: table, worst case, sanity flags, card writing, CLI."""
import subprocess
import sys

import pytest
import torch

from cas import create_model, read_card
from cas.attacks import run_attack
from cas.evaluate import EvalConfig, evaluate, markdown_table, sanity_flags


def test_sanity_flags_catch_impossible_numbers():
    ok = {"clean": 80.0, "fgsm": 55.0, "pgd20": 45.0, "autoattack": 42.0, "joint_pgd20": 44.0,
          "soft_mask_pgd20": 43.0, "adaptive_pgd20": 43.0}
    assert sanity_flags(ok, has_cas=True) == []
    above = sanity_flags({**ok, "pgd20": 82.0}, has_cas=True)
    assert any("ABOVE clean" in f for f in above) and any("gradient masking" in f for f in above)
    assert any("stronger attack autoattack" in f for f in sanity_flags({**ok, "autoattack": 60.0}, True))
    assert any("stronger attack pgd20" in f for f in sanity_flags({**ok, "fgsm": 40.0}, False))
    # a plain model has no adaptive attacks to compare with
    assert sanity_flags({"clean": 80.0, "pgd20": 40.0}, has_cas=False) == []
    # attacks run on different numbers of images are compared on the images both saw
    uneven = {**ok, "adaptive_autoattack": 46.0}  # on 500 images, soft-mask PGD on 1,000
    assert any("stronger attack adaptive_autoattack" in f for f in sanity_flags(uneven, True))
    same = {"clean": 80.0, "fgsm": 56.0, "pgd20": 49.0, "joint_pgd20": 47.0, "soft_mask_pgd20": 47.0,
            "autoattack": 47.0, "adaptive_autoattack": 46.0}
    assert sanity_flags(uneven, True, same, 500) == []
    assert "on the 500 images both saw" in sanity_flags(uneven, True, {**same, "adaptive_autoattack": 49.0}, 500)[0]


def test_evaluate_standins_table_flags_and_card(standin_pretrained, tmp_path):
    from cas import data, load_checkpoint

    x, y = data.test_subset(32)
    model, _ = load_checkpoint(standin_pretrained / "at-cas.safetensors")
    config = EvalConfig(["fgsm", "pgd", "joint_pgd", "soft_mask_pgd", "square"], batch_size=32,
                        limits={"square": 16}, overrides={"square": {"queries": 200}})
    res = evaluate(model, x, y, config)
    acc = res.accuracy
    assert set(acc) >= {"clean", "fgsm", "pgd20", "joint_pgd20", "soft_mask_pgd20", "adaptive_pgd20",
                        "square", "worst_case"}
    assert acc["adaptive_pgd20"] == min(acc["joint_pgd20"], acc["soft_mask_pgd20"])
    print("at-cas stand-in:", acc)
    assert acc["adaptive_pgd20"] <= acc["pgd20"]  # the CAS-adaptive attacks are at least as strong
    assert res.counts["square"] == 16 and res.counts["worst_case"] == 16
    assert acc["worst_case"] <= min(v for k, v in acc.items() if k != "worst_case") + 100 * 16 / 32
    table = markdown_table({"at-cas": res})
    assert table.startswith("| model | clean |") and "(n=16)" in table
    # plain models skip the CAS-only attacks
    plain, _ = load_checkpoint(standin_pretrained / "at.safetensors")
    assert "joint_pgd20" not in evaluate(plain, x[:8], y[:8], EvalConfig(["pgd", "joint_pgd"])).accuracy
    # the calling style from before EvalConfig (a list of attacks and keywords) gives the same figures
    old = evaluate(model, x, y, ["fgsm", "pgd", "joint_pgd", "soft_mask_pgd", "square"], batch_size=32,
                   limits={"square": 16}, overrides={"square": {"queries": 200}})
    assert old.accuracy == res.accuracy and old.counts == res.counts


def test_cli_writes_the_card(standin_pretrained, tmp_path):
    import shutil

    path = tmp_path / "m.safetensors"
    shutil.copy(standin_pretrained / "at.safetensors", path)
    res = subprocess.run([sys.executable, "-m", "cas.evaluate", str(path), "--n", "32", "--attacks", "fgsm,pgd",
                          "--write-card", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| model | clean | FGSM | PGD-20 | worst case |" in res.stdout
    card = read_card(path)
    assert set(card["accuracy"]) >= {"clean", "fgsm", "pgd20", "worst_case"} and card["evaluation"]["n"] == 32
    bad = subprocess.run([sys.executable, "-m", "cas.evaluate", str(path), "--attacks", "deepfool"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown attack" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "cas.evaluate", str(tmp_path / "none.safetensors")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_adaptive_autoattack_is_at_least_as_strong_as_soft_mask_pgd_and_autoattack(standin_pretrained):
    """Same images, the CAS stand-in: the adaptive AutoAttack leaves no more images correct than soft-mask
    PGD-20 or plain AutoAttack (APGD-CE + APGD-T), and its evaluation column and worst case are filled."""
    from cas import data, load_checkpoint

    model, _ = load_checkpoint(standin_pretrained / "at-cas.safetensors")
    x, y = data.test_subset(64)
    res = evaluate(model, x, y, EvalConfig(["soft_mask_pgd", "autoattack", "adaptive_autoattack"], batch_size=64,
                                           autoattack_version="apgd"))
    acc = res.accuracy
    assert acc["adaptive_autoattack"] <= min(acc["soft_mask_pgd20"], acc["autoattack"]), acc
    assert acc["adaptive_autoattack"] < acc["clean"], acc  # it does break images
    assert acc["worst_case"] <= acc["adaptive_autoattack"] and res.counts["adaptive_autoattack"] == 64
    # on a model without CAS it is AutoAttack's APGD-CE + APGD-T on the logits
    plain, _ = load_checkpoint(standin_pretrained / "at.safetensors")
    xf = x[:16].float() / 255
    a = run_attack("adaptive_autoattack", plain, xf, y[:16])
    b = run_attack("autoattack", plain, xf, y[:16], version="apgd")
    with torch.no_grad():
        assert torch.equal(plain(a).argmax(1) == y[:16], plain(b).argmax(1) == y[:16])


def test_soft_mask_temperature():
    """A small temperature gives (nearly) the argmax mask; a large one the mean of all rows."""
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        pred = model.forward_details(x).details[-1].mask
        cold = model.forward_details(x, mask="soft", temperature=1e-4).details[-1].mask
        hot = model.forward_details(x, mask="soft", temperature=1e4).details[-1].mask
    assert torch.allclose(cold, pred, atol=1e-5)
    assert torch.allclose(hot, model.cas[model.cas_points[-1]].head.weight.mean(0).expand_as(hot), atol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        model(x, mask="soft", temperature=0.0)


def test_report_is_written_and_readable(standin_pretrained, tmp_path):
    """`--report`: one self-contained page with the table (n, standard errors), the flags, the curves and
    the number to trust; the figures on the page are the evaluator's."""
    from html.parser import HTMLParser

    out = tmp_path / "report.html"
    res = subprocess.run([sys.executable, "-m", "cas.evaluate", str(standin_pretrained / "at-cas.safetensors"),
                          "--n", "24", "--autoattack-n", "12", "--attacks", "pgd,soft_mask_pgd,adaptive_autoattack",
                          "--report", str(out), "--curve-n", "8", "--curve-eps", "0,8", "--device", "cpu"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    page = out.read_text()
    texts = []

    class Text(HTMLParser):
        def handle_data(self, data):
            texts.append(data.strip())

    Text().feed(page)
    text = " ".join(t for t in texts if t)
    assert "The number to trust." in text and "Trust the per-image worst case" in text
    for column in ("clean", "PGD-20", "soft-mask PGD-20", "adaptive AutoAttack", "worst case", "standard error"):
        assert column in text, column
    assert "Accuracy vs ε" in text and "Plain PGD" in text and "Adaptive AutoAttack" in page
    assert 'src="http' not in page and "<script" in page  # the chart library is embedded: nothing to fetch
    worst = [line for line in res.stdout.splitlines() if line.startswith("| ")][-1].split("|")[-2].strip()
    assert f"{float(worst.split()[0]):.2f}" in text
    two = subprocess.run([sys.executable, "-m", "cas.evaluate", "a", "b", "--report", str(out)],
                         capture_output=True, text=True)
    assert two.returncode != 0 and "exactly one model" in two.stderr


def test_library_bounds_say_what_is_allowed():
    from cas.attacks import AttackSettings
    from cas.evaluate import accuracy_vs_eps

    model = create_model("resnet18", width=4).eval()
    x, y = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="batch_size must be"):
            evaluate(model, x, y, EvalConfig(["fgsm"], batch_size=bad))
        with pytest.raises(ValueError, match="batch_size must be"):
            accuracy_vs_eps(model, x, y, "pgd", [0, 8 / 255], batch_size=bad)
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(model, x, y, EvalConfig(["deepfool"]))
    with pytest.raises(ValueError, match="limits must be"):
        evaluate(model, x, y, EvalConfig(["fgsm"], limits={"fgsm": 0}))
    with pytest.raises(TypeError, match="unexpected options"):
        evaluate(model, x, y, EvalConfig(["fgsm"]), step=3)
    for aux in (-1.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="aux_weight must be between 0 and 100"):
            AttackSettings(aux_weight=aux).validated()


def test_channel_statistics_bounds():
    from cas.attacks import AttackSettings
    from cas.stats import channel_statistics

    model = create_model("resnet18", width=4).eval()
    x, y = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size must be"):
        channel_statistics(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="N labels"):
        channel_statistics(model, x, y[:1])
    with pytest.raises(ValueError, match="steps must be between"):
        channel_statistics(model, x, y, settings=AttackSettings(steps=0))
    assert channel_statistics(model, x, y, settings=AttackSettings(steps=1)).n == 2
