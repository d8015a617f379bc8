"""The evaluator: table, worst case, sanity flags, card writing, CLI."""
import subprocess
import sys


from cas import read_card
from cas.evaluate import evaluate, markdown_table, sanity_flags


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


def test_evaluate_standins_table_flags_and_card(standin_pretrained, tmp_path):
    from cas import data, load_checkpoint

    x, y = data.test_subset(32)
    model, _ = load_checkpoint(standin_pretrained / "at-cas.safetensors")
    res = evaluate(model, x, y, ["fgsm", "pgd", "joint_pgd", "soft_mask_pgd", "square"], batch_size=32,
                   limits={"square": 16}, overrides={"square": {"queries": 200}})
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
    assert "joint_pgd20" not in evaluate(plain, x[:8], y[:8], ["pgd", "joint_pgd"]).accuracy


def test_cli_writes_the_card(standin_pretrained, tmp_path):
    import shutil

    path = tmp_path / "m.safetensors"
    shutil.copy(standin_pretrained / "at.safetensors", path)
    res = subprocess.run([sys.executable, "-m", "cas.evaluate", str(path), "--n", "32", "--attacks", "fgsm,pgd",
                          "--write-card", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| model | clean | fgsm | pgd20 | worst_case |" in res.stdout
    card = read_card(path)
    assert set(card["accuracy"]) >= {"clean", "fgsm", "pgd20", "worst_case"} and card["evaluation"]["n"] == 32
    bad = subprocess.run([sys.executable, "-m", "cas.evaluate", str(path), "--attacks", "deepfool"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown attack" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "cas.evaluate", str(tmp_path / "none.safetensors")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "not found" in missing.stderr and "Traceback" not in missing.stderr
