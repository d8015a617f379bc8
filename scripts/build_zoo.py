"""Train, evaluate and bundle the model zoo on a 2-core CPU (about 1.5 hours) or a GPU.

    python scripts/build_zoo.py [all] [--only at-cas at] # per model: train (resumable), evaluate, bundle
    python scripts/build_zoo.py train [--only ...]        # training only
    python scripts/build_zoo.py bundle [--force]          # evaluate and bundle finished runs
    python scripts/build_zoo.py table                     # the results table (Markdown) from index.json
    python scripts/build_zoo.py flags                     # the cards' sanity flags, attacks compared on the same images
    python scripts/build_zoo.py protocol [--only ...]     # add the authors' PGD-20 / CW and the indicators to the cards

One architecture and one recipe for all seven models: ResNet-18 width 16 (0.7 M parameters: a
fast-AT epoch of 49,000 images takes about a minute on two cores with bf16), fast AT with FGSM and a
random start (Wong et al. 2020: step 1.25 eps, eps 8/255) for 10 epochs, batch 128, one-cycle lr 0.2;
the standard model gets 18 cheap epochs. The best epoch is chosen on 1,000 validation images held
out of the training set (soft-mask PGD-10 for CAS models).

`bundle` evaluates each finished run on one fixed, seeded, shuffled test subset (the first 1,000
images of `cas.data.test_subset`: clean, FGSM, PGD-20, CW-Linf, and joint and soft-mask PGD-20 for
CAS models; AutoAttack's APGD-CE + APGD-T on the first 500) with standard errors, stores the weights
as fp16 safetensors with the card in pretrained/, and updates pretrained/index.json. A model whose
run has not changed since it was bundled is skipped, so the script can be re-run after a stop.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = ["--arch", "resnet18", "--width", "16", "--recipe", "fgsm_rs", "--epsilon", "8",
          "--batch-size", "128", "--schedule", "onecycle", "--weight-decay", "5e-4",
          "--val-size", "1000", "--eval-steps", "10"]
EPOCHS = {"std": 18}  # everything else: 10
# MART + CAS diverged at the recipe's peak learning rate 0.2 (loss NaN at epoch 3, caught by the collapse
# guard; MART's -log(1 - max wrong probability) term has gradients up to 1e4 on the auxiliary heads), so it
# is trained at 0.1; every other model uses the recipe's 0.2
LR = {"mart-cas": 0.1}
ZOO = {  # name: (method, cas, description); the order is the training order (the app's first needs first)
    "at-cas": ("at", True, "Madry AT + CAS on both blocks of the last stage"),
    "at": ("at", False, "Madry adversarial training"),
    "std": ("std", False, "Standard training: the non-robust reference"),
    "trades": ("trades", False, "TRADES (beta 6)"),
    "trades-cas": ("trades", True, "TRADES (beta 6) + CAS"),
    "mart": ("mart", False, "MART (beta 6)"),
    "mart-cas": ("mart", True, "MART (beta 6) + CAS"),
    # CAS's relatives (cas.family), each with its authors' placement and auxiliary weight
    "at-cifs": ("at", True, "Madry AT + CIFS on both blocks of the last stage (Yan et al. 2021)"),
    "at-ewas": ("at", True, "Madry AT + EWAS between the blocks of the last stage (Zhang et al. 2023)"),
    "at-fsr": ("at", True, "Madry AT + FSR after the last stage (Kim et al. 2023)"),
}
DEFENSE = {"at-cifs": "cifs", "at-ewas": "ewas", "at-fsr": "fsr"}  # the rest: CAS where there are modules
INDEX_ORDER = ["std", "at", "at-cas", "trades", "trades-cas", "mart", "mart-cas", "at-cifs", "at-ewas", "at-fsr"]


def run_dir(name: str) -> Path:
    return REPO / "runs" / f"zoo-{name}"


def train_one(name: str, args) -> None:
    method, cas_on, desc = ZOO[name]
    cmd = [sys.executable, "-m", "cas.train", "--method", method, "--cas" if cas_on else "--no-cas",
           "--epochs", str(args.epochs or EPOCHS.get(name, 10)), "--out", f"runs/zoo-{name}",
           "--description", desc, "--resume", "--no-progress", *RECIPE, "--lr", str(LR.get(name, 0.2))]
    if name in DEFENSE:
        cmd += ["--defense", DEFENSE[name]]
    if args.data:
        cmd += ["--data", args.data]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def bundle_one(name: str, args, test_set) -> bool:
    """Evaluate run ``name`` and store it in pretrained/; False when there is nothing (new) to do."""
    from cas.checkpoint import atomic_write, load_model_and_card, read_model_card, save_checkpoint
    from cas.robustness import DEFAULT_ATTACKS, EvalConfig, evaluate
    from cas.runs import RunFolder
    from cas.train import read_log

    method, cas_on, desc = ZOO[name]
    folder = RunFolder(run_dir(name))
    run = folder.best
    out_dir = REPO / "pretrained"
    target = out_dir / f"{name}.safetensors"
    if not run.exists() or '"event": "finished"' not in folder.log.read_text():
        print(f"skipping {name}: its training run has not finished", file=sys.stderr)
        return False
    sha = _sha(run)
    if target.exists() and not args.force and read_model_card(target).source_sha == sha:
        print(f"{name}: already bundled from this run", file=sys.stderr)
        return False
    x, y = test_set
    model, card = load_model_and_card(run)
    config = EvalConfig(DEFAULT_ATTACKS, batch_size=500, autoattack_version="apgd",
                        limits={"autoattack": args.autoattack_n, "adaptive_autoattack": args.autoattack_n})
    if name in DEFENSE:
        config = family_config(args)
        x, y = x[:args.family_n], y[:args.family_n]
    res = evaluate(model, x, y, config, out=REPO / "runs" / "zoo-eval" / name if name in DEFENSE else None,
                   progress=lambda key, done, total: print(f"  {name} {key}: {done}/{total}", flush=True))
    log = read_log(folder.log)
    card = card.updated(name=name, description=desc, accuracy=res.accuracy, source_sha=sha,
                train_seconds=round(sum(r.get("seconds", 0) for r in log), 1),
                evaluation={"n": res.n, "counts": res.counts, "stderr": res.stderr, "eps": 8,
                            **({"indicators": res.indicators, "indicators_n": config.diagnose_n}
                               if config.diagnose else {}),
                            "subset": "first N of cas.data.test_subset (fixed seeded shuffle of the test set)",
                            "autoattack": "APGD-CE + APGD-T (9 targets, 100 iterations each) of AutoAttack",
                            "adaptive_autoattack": "the same APGD-CE + APGD-T with gradients through the soft "
                                                   "CAS mask at temperatures 0.1, 1 and 10, judged by the "
                                                   "real model, per-image worst case",
                            "precision": "attacks under bf16 autocast where native, judged in fp32",
                            "flags": res.flags, "seconds": res.seconds})
    save_checkpoint(target, model, card, fp16=True)
    index_file = out_dir / "index.json"
    entries = json.loads(index_file.read_text())["models"] if index_file.exists() else []
    entries = [e for e in entries if e["name"] != name] + [{
        "name": name, "file": target.name, "description": desc, "method": method, "cas": cas_on,
        **({"defense": DEFENSE[name]} if name in DEFENSE else {}),
        "accuracy": res.accuracy, "counts": res.counts, "stderr": res.stderr,
        "train_seconds": card.train_seconds, "command": card.command}]
    entries.sort(key=lambda e: INDEX_ORDER.index(e["name"]) if e["name"] in INDEX_ORDER else 99)
    atomic_write(index_file, lambda t: Path(t).write_text(json.dumps({"models": entries}, indent=2) + "\n"))
    print(f"{name}: " + ", ".join(f"{k} {v:.1f}%" for k, v in res.accuracy.items())
          + f"  [eval {sum(res.seconds.values()):.0f} s, training {card.train_seconds:.0f} s]", flush=True)
    for f in res.flags:
        print(f"SANITY FLAG {name}: {f}", file=sys.stderr, flush=True)
    return True


# the relatives' evaluation (cas.family): their authors' own attacks, plain PGD-20, the project's adaptive
# attacks through each one's relaxation (joint and soft-mask PGD-20, adaptive AutoAttack), gradient-free
# Square and the per-image worst case, with the attack-failure indicators of every gradient attack
FAMILY_LONG = ("adaptive_autoattack", "square", "cifs_pgd100", "fsr_pgd100")  # on the first --family-long-n


def family_config(args):
    """What the relatives (and, for comparison, plain AT) are evaluated with: each runs the protocol
    attacks of its own defence only (the evaluator skips the others)."""
    from cas.attacks.protocols import PROTOCOLS
    from cas.diagnose import CHEAP
    from cas.robustness import EvalConfig
    attacks = ("fgsm", "pgd", *PROTOCOLS, "joint_pgd", "soft_mask_pgd", "adaptive_autoattack", "square")
    return EvalConfig(attacks, batch_size=500, limits={a: args.family_long_n for a in FAMILY_LONG},
                      overrides={"square": {"queries": args.square_queries}}, diagnose=CHEAP,
                      diagnose_n=min(200, args.family_long_n))


def recheck_flags(test_set) -> None:
    """Recompute each bundled model's sanity flags with attacks compared on the images all of them saw
    (the worst case's first N): the attacks that ran on more images are run again on those N with the
    same seeds; the others' figures already are on them. Only the card's flags change."""
    from cas.attacks import ATTACKS
    from cas.checkpoint import load_model_and_card, update_card
    from cas.robustness import EvalConfig, evaluate, sanity_flags

    x, y = test_set
    for e in json.loads((REPO / "pretrained" / "index.json").read_text())["models"]:
        path = REPO / "pretrained" / e["file"]
        model, card = load_model_and_card(path)
        n_same, counts = card.evaluation["counts"]["worst_case"], card.evaluation["counts"]
        rerun = [name for name, spec in ATTACKS.items() if spec.card_key in counts and counts[spec.card_key] > n_same]
        res = evaluate(model, x[:n_same], y[:n_same], EvalConfig(rerun, batch_size=500))
        same = {k: v for k, v in card.accuracy.items() if counts.get(k) == n_same} | res.accuracy
        flags = sanity_flags(card.accuracy, card.cas, same, n_same)
        update_card(path, evaluation={"flags": flags})
        print(f"{e['name']}: " + ("; ".join(flags) if flags else "no flags"), flush=True)


PROTOCOL = ("authors_pgd", "authors_cw")  # the CAS authors' own evaluation (cas.attacks.protocols)
WATCHED = ("pgd", "joint_pgd", "soft_mask_pgd")  # attacks whose indicators are checked besides the protocol's


def protocol_one(entry: dict, test_set, diagnose_n: int) -> None:
    """Add the authors' PGD-20 and CW to a bundled model's card and index entry, on the card's own
    images, and record the attack-failure indicators (cas.diagnose's CHEAP set) of those two attacks and
    of PGD-20, joint and soft-mask PGD-20 on the first ``diagnose_n`` images. Partial results go to
    runs/zoo-protocol/NAME, so a stopped run resumes."""
    from cas.checkpoint import load_model_and_card, update_card
    from cas.diagnose import CHEAP
    from cas.robustness import EvalConfig, evaluate

    name = entry["name"]
    path = REPO / "pretrained" / entry["file"]
    model, card = load_model_and_card(path)
    n = card.evaluation["n"]
    x, y = test_set[0][:n], test_set[1][:n]
    out = REPO / "runs" / "zoo-protocol" / name
    res = evaluate(model, x, y, EvalConfig(PROTOCOL, batch_size=400, diagnose=CHEAP, diagnose_n=diagnose_n),
                   out=out, progress=lambda key, done, total: print(f"  {name} {key}: {done}/{total}", flush=True))
    watched = [a for a in WATCHED if not (a != "pgd" and not card.cas)]
    seen = evaluate(model, x[:diagnose_n], y[:diagnose_n],
                    EvalConfig(watched, batch_size=diagnose_n, diagnose=CHEAP, diagnose_n=diagnose_n),
                    out=out / "watched")
    keys = [k for k in res.accuracy if k not in ("clean", "worst_case")]
    ev = card.evaluation or {}
    evaluation = {**ev,
                  "counts": {**ev.get("counts", {}), **{k: res.counts[k] for k in keys}},
                  "stderr": {**ev.get("stderr", {}), **{k: res.stderr[k] for k in keys}},
                  "seconds": {**ev.get("seconds", {}), **{k: res.seconds[k] for k in keys}},
                  "protocol": "authors' PGD-20 and CW: eps 0.031, 20 steps of 0.003, uniform random start, "
                              "final + 2 x mean auxiliary loss, last iterate (cas.attacks.protocols); "
                              "image i's random start seeded with i",
                  "indicators": {a: v for a, v in {**res.indicators, **seen.indicators}.items()},
                  "indicators_n": diagnose_n}
    update_card(path, accuracy={k: res.accuracy[k] for k in keys}, evaluation=evaluation)
    _update_index(name, res, keys, {"indicators": {a: [i["key"] for i in v if i["fired"]]
                                                   for a, v in evaluation["indicators"].items()}})
    print(f"{name}: " + ", ".join(f"{k} {res.accuracy[k]:.1f} ± {res.stderr[k]:.1f}" for k in keys)
          + f" (n = {n}); indicators fired: "
          + "; ".join(f"{a}: {', '.join(i['key'] for i in v if i['fired']) or 'none'}"
                      for a, v in evaluation["indicators"].items()), flush=True)


def table() -> str:
    """The bundled models' accuracies as a Markdown table: percent ± standard error, with n."""
    from cas.robustness import COLUMNS as ALL

    entries = [e for e in json.loads((REPO / "pretrained" / "index.json").read_text())["models"]
               if e["name"] not in DEFENSE]  # the relatives have their own table (family_table)
    order = [k for k in ALL if k not in ("authors_pgd20", "authors_cw")]
    order[order.index("cw") + 1:order.index("cw") + 1] = ["authors_pgd20", "authors_cw"]  # beside PGD and CW
    keys = [k for k in order if k != "adaptive_pgd20" and any(k in e["accuracy"] for e in entries)]
    columns = [(k, ALL[k] + (" (APGD-CE + APGD-T)" if k == "autoattack" else "")) for k in keys]
    lines = ["| model | " + " | ".join(label for _, label in columns) + " | training |",
             "|---|" + "---|" * (len(columns) + 1)]
    for e in entries:
        cells = [f"{e['accuracy'][k]:.1f} ± {e['stderr'][k]:.1f}" if k in e["accuracy"] else "—"
                 for k, _ in columns]
        lines.append(f"| `{e['name']}` | " + " | ".join(cells) + f" | {e['train_seconds'] / 60:.0f} min |")
    counts = entries[0]["counts"] if entries else {}
    lines.append(f"\nPercent ± one standard error; n = {counts.get('clean')} test images "
                 f"(AutoAttack, adaptive AutoAttack and the worst case: n = {counts.get('autoattack')}; the worst "
                 "case is over the attacks of the first evaluation, before the authors' columns were added).")
    return "\n".join(lines)


def add_attacks(entry: dict, attacks: list[str], test_set, n: int, args) -> None:
    """Add ``attacks`` (on the first ``n`` images, the family's settings) to a bundled model's card and
    index entry, leaving its other figures as they are (the relatives' baselines get Square this way)."""
    from cas.checkpoint import load_model_and_card, update_card
    from cas.robustness import evaluate

    name, path = entry["name"], REPO / "pretrained" / entry["file"]
    model, card = load_model_and_card(path)
    config = replace(family_config(args), attacks=tuple(attacks), diagnose=())
    res = evaluate(model, test_set[0][:n], test_set[1][:n], config, out=REPO / "runs" / "zoo-eval" / f"{name}-added")
    keys = [k for k in res.accuracy if k not in ("clean", "worst_case")]
    ev = card.evaluation or {}
    update_card(path, accuracy={k: res.accuracy[k] for k in keys}, evaluation={
        **ev, **{f: {**ev.get(f, {}), **{k: getattr(res, f)[k] for k in keys}} for f in ("counts", "stderr", "seconds")}})
    _update_index(name, res, keys)
    print(f"{name}: " + ", ".join(f"{k} {res.accuracy[k]:.1f} ± {res.stderr[k]:.1f} (n {n})" for k in keys), flush=True)


def _update_index(name: str, res, keys: list[str], extra: dict | None = None) -> None:
    """Merge the figures ``keys`` of evaluation ``res`` (and ``extra`` fields) into ``name``'s index entry."""
    from cas.checkpoint import atomic_write

    index_file = REPO / "pretrained" / "index.json"
    index = json.loads(index_file.read_text())
    for e in index["models"]:
        if e["name"] == name:
            for f in ("accuracy", "counts", "stderr"):
                e[f] = {**e[f], **{k: getattr(res, f)[k] for k in keys}}
            e.update(extra or {})
    atomic_write(index_file, lambda t: Path(t).write_text(json.dumps(index, indent=2) + "\n"))


def family_table() -> str:
    """The relatives beside plain AT and AT + CAS: clean, each one's own protocol (its authors' attacks, the
    lowest of them first), plain PGD-20, the adaptive attacks, Square and the per-image worst case."""
    from cas.attacks import own_protocol
    from cas.robustness import COLUMNS

    entries = {e["name"]: e for e in json.loads((REPO / "pretrained" / "index.json").read_text())["models"]}
    keys = ["clean", "pgd20", "joint_pgd20", "soft_mask_pgd20", "adaptive_autoattack", "square", "worst_case"]
    lines = ["| model | clean | their protocol (lowest of their attacks) | " + " | ".join(COLUMNS[k] for k in keys[1:])
             + " |", "|---|" + "---|" * (len(keys) + 1)]

    def cell(e, k):
        return f"{e['accuracy'][k]:.1f} ± {e['stderr'][k]:.1f} (n {e['counts'][k]})" if k in e["accuracy"] else "—"

    for name in ("at", "at-cas", *DEFENSE):
        if name not in entries:
            continue
        e = entries[name]
        own = [s.card_key for s in own_protocol(DEFENSE.get(name, "cas" if e["cas"] else None))
               if s.card_key in e["accuracy"]]
        worst = min(own, key=lambda k: e["accuracy"][k]) if own else None
        theirs = f"{cell(e, worst)}: {COLUMNS[worst]}" if worst else "—"
        lines.append(f"| `{name}` | {cell(e, 'clean')} | {theirs} | " + " | ".join(cell(e, k) for k in keys[1:]) + " |")
    return "\n".join(lines)


ADAPTIVE = ("joint_pgd", "soft_mask_pgd", "adaptive_autoattack")  # the project's attacks that see the mask


def family_check() -> str:
    """The issue's target, per relative: is its strongest adaptive attack at least as strong as every attack
    its authors ran, on the same images? From the evaluation's per-image verdicts (runs/zoo-eval/NAME):
    the adaptive attacks' per-image worst case against each of theirs, on the images both saw, and the
    images their attack broke that no adaptive attack did."""
    from cas.attacks.protocols import PROTOCOLS

    lines = [("| model | their attack | n | their accuracy | adaptive (per-image worst of joint, soft-mask, "
              "adaptive AutoAttack) | images only theirs broke |"), "|---|---|---|---|---|---|"]
    for name, defense in DEFENSE.items():
        folder = REPO / "runs" / "zoo-eval" / name
        if not folder.exists():
            continue

        def bits(attack, folder=folder):
            d = json.loads((folder / f"{attack}.json").read_text())
            return [c == "1" for c in d["verdicts"]]
        adaptive = [bits(a) for a in ADAPTIVE if (folder / f"{a}.json").exists()]
        for attack, p in PROTOCOLS.items():
            if p.defense != defense or not (folder / f"{attack}.json").exists():
                continue
            theirs = bits(attack)
            n = min(len(theirs), *(len(a) for a in adaptive))
            ours = [all(a[i] for a in adaptive) for i in range(n)]
            only = sum(1 for i in range(n) if not theirs[i] and ours[i])
            lines.append(f"| `{name}` | {p.label} | {n} | {100 * sum(theirs[:n]) / n:.1f} | "
                         f"{100 * sum(ours) / n:.1f} | {only} |")
    return "\n".join(lines)


def main():
    from cas.cli import HelpFormatter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("cmd", nargs="?", default="all", choices=["all", "train", "bundle", "table", "family-table", "flags",
                                                               "protocol", "square"],
                    help="all: train then bundle each model in turn; train or bundle: only that stage; "
                         "table: print the results table; flags: recompute the bundled cards' sanity flags "
                         "with attacks compared on the same images; protocol: add the authors' PGD-20 and CW "
                         "and the attack-failure indicators to the bundled cards; family-table: the relatives' "
                         "table; square: add Square (the relatives' settings) to the baselines' cards")
    ap.add_argument("--only", nargs="*", choices=list(ZOO), help="models to build (default: all seven)")
    ap.add_argument("--epochs", type=int, default=None, help="override every model's epochs (for trials)")
    ap.add_argument("--n", type=int, default=1000, help="test images for the evaluation")
    ap.add_argument("--autoattack-n", type=int, default=500, help="test images for AutoAttack (the first N)")
    ap.add_argument("--family-n", type=int, default=500, help="test images for the relatives' evaluation")
    ap.add_argument("--family-long-n", type=int, default=200,
                    help="the relatives: images for adaptive AutoAttack, Square and PGD-100 (the first N)")
    ap.add_argument("--square-queries", type=int, default=2000, help="the relatives: Square's query budget")
    ap.add_argument("--diagnose-n", type=int, default=200, help="protocol: images the indicators are checked on")
    ap.add_argument("--force", action="store_true", help="re-evaluate models already bundled from their run")
    ap.add_argument("--data", default=None, help="CIFAR-10 location (default: $CAS_DATA or the usual places)")
    a = ap.parse_args()
    if a.cmd == "table":
        print(table())
        return
    if a.cmd == "family-table":
        print(family_table())
        print()
        print(family_check())
        return
    if a.cmd == "square":  # Square beside the relatives' on the bundled baselines (default: at, at-cas)
        from cas import data as cdata

        test_set = cdata.test_subset(a.family_long_n, a.data)
        for e in json.loads((REPO / "pretrained" / "index.json").read_text())["models"]:
            if e["name"] in (a.only or ["at", "at-cas"]):
                add_attacks(e, ["square"], test_set, a.family_long_n, a)
        return
    if a.cmd == "protocol":
        from cas import data as cdata

        test_set = cdata.test_subset(a.n, a.data)
        for e in json.loads((REPO / "pretrained" / "index.json").read_text())["models"]:
            if not a.only or e["name"] in a.only:
                protocol_one(e, test_set, a.diagnose_n)
        return
    if a.cmd == "flags":
        from cas import data as cdata

        recheck_flags(cdata.test_subset(a.n, a.data))
        return
    names = [n for n in ZOO if not a.only or n in a.only]
    test_set = None
    for name in names:
        if a.cmd in ("all", "train"):
            train_one(name, a)
        if a.cmd in ("all", "bundle"):
            if test_set is None:
                from cas import data as cdata
                test_set = cdata.test_subset(a.n, a.data)
            bundle_one(name, a, test_set)


if __name__ == "__main__":
    main()
