"""Small CPU-trained stand-ins for the bundled checkpoints, made with the real trainer on real
CIFAR-10 images (a few thousand, two epochs, ResNet-18 width 8). They exercise every code path that
the bundled models do; their accuracies are far below the bundled ones and are measured, not assumed.
"""
from __future__ import annotations

import json
from pathlib import Path

from cas import read_card
from cas.train import TrainConfig, train

STANDINS = {  # name -> (method, cas)
    "std": ("std", False),
    "at": ("at", False),
    "at-cas": ("at", True),
}


def make_standins(dest: Path, names=tuple(STANDINS), train_subset: int = 2048, epochs: int = 2) -> Path:
    dest = Path(dest)
    entries = []
    for name in names:
        method, cas = STANDINS[name]
        run = dest / "runs" / name
        cfg = TrainConfig(method=method, cas=cas, width=8, epochs=epochs, batch_size=128, lr=0.1,
                          train_subset=train_subset, val_size=200, steps=3, step_size=3.0, eval_steps=3,
                          out=str(run), device="cpu", progress=False,
                          description=f"CPU stand-in ({method}{' + CAS' if cas else ''}, width 8)")
        best = train(cfg)
        target = dest / f"{name}.safetensors"
        best.replace(target)
        card = read_card(target)
        held = card.get("heldout", {})
        entries.append({"name": name, "file": target.name, "description": cfg.description, "method": method,
                        "cas": cas, "accuracy": {"clean": held.get("heldout_clean")}})
    (dest / "index.json").write_text(json.dumps({"models": entries}, indent=2))
    return dest
