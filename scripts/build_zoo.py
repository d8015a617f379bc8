"""Train, evaluate and bundle the model zoo (needs a GPU; about 25 minutes of H100 time in all).

    python scripts/build_zoo.py train [--only at-cas] [--epochs 40]   # resumable: run it again after a stop
    python scripts/build_zoo.py bundle [--n 10000] [--autoattack-n 1000]

`train` runs `python -m cas.train` for each model into runs/zoo-<name>; `bundle` evaluates every
finished run on the test set, stores the weights as fp16 safetensors with their cards in pretrained/,
and writes pretrained/index.json. All seven share one architecture (ResNet-18 width 32) and one recipe.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--arch", "resnet18", "--width", "32", "--epsilon", "8", "--step-size", "2", "--steps", "10",
          "--batch-size", "512", "--lr", "0.2", "--schedule", "onecycle", "--weight-decay", "5e-4"]
ZOO = {  # name: (method, cas, epochs, description)
    "std": ("std", False, 30, "Standard training: the non-robust reference"),
    "at": ("at", False, 40, "Madry adversarial training (PGD-10, eps 8/255)"),
    "at-cas": ("at", True, 40, "Madry AT + CAS on both blocks of the last stage"),
    "trades": ("trades", False, 40, "TRADES (beta 6)"),
    "trades-cas": ("trades", True, 40, "TRADES (beta 6) + CAS"),
    "mart": ("mart", False, 40, "MART (beta 6)"),
    "mart-cas": ("mart", True, 40, "MART (beta 6) + CAS"),
}


def train(args):
    for name, (method, cas_on, epochs, desc) in ZOO.items():
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", "cas.train", "--method", method, "--cas" if cas_on else "--no-cas",
               "--epochs", str(args.epochs or epochs), "--out", f"runs/zoo-{name}",
               "--description", desc, "--resume", *COMMON]
        if args.data:
            cmd += ["--data", args.data]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)


def bundle(args):
    import torch

    from cas import data as cdata
    from cas.checkpoint import load_checkpoint, save_checkpoint
    from cas.evaluate import evaluate, markdown_table

    x, y = cdata.test_subset(args.n, args.data)
    out_dir = REPO / "pretrained"
    entries, rows = [], {}
    for name, (method, cas_on, _, desc) in ZOO.items():
        run = REPO / "runs" / f"zoo-{name}" / "best.safetensors"
        if not run.exists():
            print(f"skipping {name}: {run} not found", file=sys.stderr)
            continue
        model, card = load_checkpoint(run, "cuda" if torch.cuda.is_available() else "cpu")
        attacks = ["fgsm", "pgd", "cw", "autoattack"] + (["joint_pgd", "soft_mask_pgd"] if cas_on else [])
        res = evaluate(model, x, y, attacks, batch_size=1000, limits={"autoattack": args.autoattack_n})
        rows[name] = res
        card.update(accuracy=res.accuracy, evaluation={"n": res.n, "counts": res.counts, "eps": 8,
                                                        "flags": res.flags, "seconds": res.seconds},
                    description=desc, name=name)
        save_checkpoint(out_dir / f"{name}.safetensors", model, card, fp16=True)
        entries.append({"name": name, "file": f"{name}.safetensors", "description": desc, "method": method,
                        "cas": cas_on, "accuracy": res.accuracy, "command": card.get("command")})
        for f in res.flags:
            print(f"SANITY FLAG {name}: {f}", file=sys.stderr)
    (out_dir / "index.json").write_text(json.dumps({"models": entries}, indent=2) + "\n")
    print(markdown_table(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--only", nargs="*")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--data", default=None)
    b = sub.add_parser("bundle")
    b.add_argument("--n", type=int, default=10000)
    b.add_argument("--autoattack-n", type=int, default=1000)
    b.add_argument("--data", default=None)
    a = ap.parse_args()
    train(a) if a.cmd == "train" else bundle(a)


if __name__ == "__main__":
    main()
