"""The trainer: ``python -m cas.train --method at --cas --epochs 40 --out runs/at-cas``.

One loop for every method (they differ only in the loss, see :mod:`cas.losses`). Training data sit on
the device as uint8 and are augmented there. Every epoch appends a JSON line to ``<out>/log.jsonl``
and atomically rewrites ``<out>/state.pt`` (everything needed to resume: ``--resume``); the epoch with
the best robust accuracy on a validation split carved from the *training* set (never test images) is
kept as ``<out>/best.safetensors`` with its model card; a collapse of that accuracy (catastrophic
overfitting of single-step recipes) is flagged loudly in the log and the card.
On CPUs with native bf16 (AVX-512 BF16, AMX) and on CUDA, training and the crafting of training
examples run under bf16 autocast with channels_last tensors (``--no-amp`` for fp32).
A run stops cleanly, keeping its last finished epoch, when ``<out>/STOP`` appears.
Under ``torchrun --nproc_per_node N`` the same command trains with DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data as cdata
from .attacks import ATTACKS
from .checkpoint import ModelCard, atomic_write, save_checkpoint, update_card
from .cli import HelpFormatter
from .family import DEFENSES
from .losses import METHODS, RECIPES, LossConfig, perturb, training_loss
from .models import PAPER_ARCHS, WIDTH_ARCHS, create_model
from .precision import autocast, fast_bf16
from .runs import RunFolder


def _opt(default, help: str, choices: tuple | None = None):
    """A TrainConfig field with its ``--help`` text and allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


# allowed ranges of the numeric settings (inclusive): generous for real runs, finite for every one
NUMBER_LIMITS = {
    "width": (1, 1024), "epochs": (1, 1000), "batch_size": (1, 8192), "lr": (0, 1e6), "warmup": (0, 1),
    "weight_decay": (0, 1), "momentum": (0, 1), "epsilon": (0, 255), "step_size": (0, 255), "steps": (1, 100),
    "beta": (0, 100), "aux_weight": (0, 100), "train_subset": (0, 50_000), "val_size": (0, 10_000),
    "eval_steps": (1, 100), "eval_batch_size": (1, 10_000), "seed": (0, 2**31 - 1),
}


@dataclass
class TrainConfig:
    """Every setting of a run, with its help: the command line, the app's Train page and the background
    jobs all speak in this one type (validated once by :meth:`validate`)."""

    method: str = _opt("at", "training objective", METHODS)
    cas: bool = _opt(True, "add CAS modules (at the architecture's default points)")
    defense: str = _opt("cas", "which member of the channel-defence family the modules are (ResNet-18 only "
                        "for all but cas; see cas.family)", tuple(DEFENSES))
    arch: str = _opt("resnet18", "architecture", PAPER_ARCHS)
    width: int = _opt(64, "first-stage width of ResNet-18 / VGG-16 (64: the paper's model)")
    epochs: int = _opt(40, "training epochs")
    batch_size: int = _opt(512, "images per optimizer step")
    lr: float = _opt(0.2, "peak learning rate (onecycle) or the initial one (multistep, constant)")
    schedule: str = _opt("onecycle", "learning-rate schedule", ("onecycle", "multistep", "constant"))
    warmup: float = _opt(0.25, "onecycle: fraction of the run spent rising to the peak")
    weight_decay: float = _opt(5e-4, "L2 weight decay (not on biases and batch-norm parameters)")
    momentum: float = _opt(0.9, "SGD (Nesterov) momentum")
    epsilon: float = _opt(8.0, "Linf budget of the training examples, in /255")
    recipe: str = _opt("pgd", "how training examples are made: PGD-k, FGSM with a random start (fast AT) "
                       "or N-FGSM (see cas.losses)", RECIPES)
    step_size: float | None = _opt(None, "attack step in /255 (default: the recipe's own: pgd "
                                   "max(eps / 4, 2.5 x eps / steps), fgsm_rs 1.25 eps, n_fgsm eps)")
    steps: int = _opt(10, "attack steps of the pgd recipe")
    beta: float | None = _opt(None, "TRADES / MART trade-off (default: 6)")
    aux_weight: float | None = _opt(None, "weight of the modules' auxiliary losses (default: the defence's "
                                    "authors' value: CAS and CIFS 2, EWAS 0.01, FSR 1)")
    train_subset: int = _opt(0, "train on this many images (0: the whole training split)")
    val_size: int = _opt(1000, "validation images held out of the training set; their robust accuracy "
                               "picks the best epoch (0: no check)")
    eval_steps: int = _opt(10, "PGD steps of the per-epoch robust check (soft-mask PGD for CAS models)")
    eval_batch_size: int = _opt(1000, "images per batch of the per-epoch check")
    seed: int = _opt(0, "random seed (weights, data order, augmentation, attacks)")
    data: str | None = _opt(None, "CIFAR-10 location (default: $CAS_DATA or the usual places)")
    download: bool = _opt(False, "fetch CIFAR-10 through torchvision first (needs internet)")
    out: str = _opt("runs/run", "run folder: log.jsonl, state.pt, best.safetensors")
    device: str = _opt("auto", "where to train", ("auto", "cpu", "cuda"))
    amp: bool = _opt(True, "bf16 autocast where the hardware does bf16 natively (CUDA, AVX-512 BF16 CPUs)")
    channels_last: bool = _opt(True, "channels_last memory format for the model and the batches")
    compile: bool = _opt(False, "torch.compile the model (CUDA only)")
    resume: bool = _opt(False, "continue the interrupted run in --out from its last finished epoch")
    description: str = _opt("", "one line about the run, kept in its model card")
    progress: bool = _opt(True, "progress bar and per-epoch lines on stderr")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a run's ``config.json`` (older runs called ``aux_weight`` ``cas_beta``)."""
        d = dict(d)
        if "cas_beta" in d:
            d.setdefault("aux_weight", d.pop("cas_beta"))
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> "TrainConfig":
        """Check every setting (types and ranges); raises ValueError saying what is allowed."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in NUMBER_LIMITS and v is not None:
                low, high = NUMBER_LIMITS[f.name]
                whole = str(f.type) == "int"
                if isinstance(v, bool) or not isinstance(v, int if whole else (int, float)) \
                        or not math.isfinite(v) or not low <= v <= high:
                    kind = "whole number" if whole else "number"
                    raise ValueError(f"{f.name} must be a {kind} from {low:g} to {high:g}, got {v!r}")
            choices = f.metadata["choices"]
            if choices and v not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {v!r}")
            if str(f.type) == "bool" and not isinstance(v, bool):
                raise ValueError(f"{f.name} must be true or false, got {v!r}")
        if not isinstance(self.description, str) or len(self.description) > 500 or "\n" in self.description:
            raise ValueError("description must be one line of at most 500 characters")
        checks = [
            (self.lr > 0, "lr must be positive"),
            (self.step_size is None or self.step_size > 0, "step_size must be positive"),
            (self.warmup < 1, "warmup is a fraction in [0, 1)"),
            (self.momentum < 1, "momentum must be below 1"),
            (self.defense == "cas" or (self.arch == "resnet18" and self.cas),
             f"the {self.defense} defence is built into ResNet-18 only (with --cas)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.loss_config  # the loss's own checks (method, recipe, budget and step)
        return self

    @property
    def loss_config(self) -> LossConfig:
        step = None if self.step_size is None else self.step_size / 255
        aux = DEFENSES[self.defense].aux_weight if self.aux_weight is None else self.aux_weight
        return LossConfig(self.method, self.beta, aux, self.epsilon / 255, step, self.steps,
                          self.recipe, self.amp)

    def model_kwargs(self) -> dict:
        kw = {"cas": self.cas}
        if self.cas and self.defense != "cas":
            kw["defense"] = self.defense
        if self.arch in WIDTH_ARCHS:
            kw["width"] = self.width
        return kw


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total``."""
    t = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":  # /10 at 75% and 90% of the run, as the authors did
        return 0.01 if t >= 0.9 else 0.1 if t >= 0.75 else 1.0
    if t < cfg.warmup:  # onecycle: linear up, then cosine down to zero
        return t / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * (t - cfg.warmup) / (1 - cfg.warmup)))


def _setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, (dist.get_world_size() if dist.is_initialized() else 1)


def _device(cfg: TrainConfig, rank: int) -> torch.device:
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(cfg.device)


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean()) * 100


def check_heldout(model, x_u8, y, cfg: TrainConfig, device) -> dict:
    """Clean and robust accuracy (percent) on the validation split; robust uses soft-mask PGD for CAS
    models (plain PGD over-reports them) and plain PGD otherwise. Attacks run under bf16 autocast
    where it is fast; every accuracy is judged in fp32."""
    clean = correct = 0
    specs = [ATTACKS["soft_mask_pgd"].for_model(model)]  # plain PGD on a model without CAS
    if getattr(model, "has_cas", False) and model.defense != "cas":  # CAS's relatives: whichever is stronger
        specs.append(ATTACKS["pgd"])
    for i in range(0, x_u8.shape[0], cfg.eval_batch_size):
        xb = cdata.to_float(x_u8[i:i + cfg.eval_batch_size].to(device))
        yb = y[i:i + cfg.eval_batch_size].to(device)
        holds = torch.ones_like(yb, dtype=torch.bool)
        for spec in specs:
            xa = spec.fn(model, xb, yb, eps=cfg.epsilon / 255, steps=cfg.eval_steps, seed=i, amp=cfg.amp,
                         until_fooled=True)
            with torch.no_grad():
                holds &= model(xa).argmax(1) == yb
        clean += (_accuracy(model, xb, yb) * len(yb))
        correct += holds.sum().item()
    n = max(x_u8.shape[0], 1)
    return {"heldout_clean": round(clean / n, 2), "heldout_robust": round(100 * correct / n, 2),
            "robust_attack": "+".join(f"{s.name}{cfg.eval_steps}" for s in specs)}


COLLAPSE_FRACTION = 0.5  # robust accuracy below this share of its best so far counts as a collapse


def collapse_warning(robust: float, best: float, epoch: int) -> str | None:
    """A loud message when validation robust accuracy has collapsed (catastrophic overfitting: the
    single-step attack of fast AT stops finding adversarial examples and robustness vanishes)."""
    if best >= 10 and robust < COLLAPSE_FRACTION * best:
        return (f"CATASTROPHIC OVERFITTING? epoch {epoch}: validation robust accuracy {robust:.1f}% fell "
                f"below {COLLAPSE_FRACTION:.0%} of its best ({best:.1f}%). The best epoch is kept; consider "
                "--recipe n_fgsm, a smaller step or --recipe pgd.")
    return None


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum; no weight decay on biases and batch-norm parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def train_step(model, net, opt, xb, yb, lcfg: LossConfig, generator=None):
    """One update: craft the training examples with ``model`` in eval mode (as the authors did), then
    one optimizer step on the method's loss through ``net`` (``model`` itself, or its DDP wrapper) in
    train mode, both under bf16 autocast where it is fast (``lcfg.amp``). Returns (loss, logits), detached."""
    model.eval()
    x_adv = perturb(model, xb, yb, lcfg, generator=generator)  # under bf16 autocast where it is fast
    model.train()
    with autocast(xb.device, lcfg.amp):
        loss, logits = training_loss(net, xb, yb, x_adv, lcfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def train(cfg: TrainConfig, on_epoch=None) -> Path:
    """Run (or resume) training; returns the path of the best checkpoint. ``on_epoch(record)`` is
    called with each epoch's log record."""
    cfg.validate()
    rank, world = _setup_distributed()
    device = _device(cfg, rank)
    out = Path(cfg.out)
    run = RunFolder(out)
    main_proc = rank == 0
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        run.stop.unlink(missing_ok=True)

    # data: a fixed validation split (the same for every run) carved from the training set
    x_all, y_all = cdata.load("train", cfg.data, download=cfg.download)
    data_name = cdata.find_source(cfg.data).name
    (x_train, y_train), (x_held, y_held) = cdata.validation_split(x_all, y_all, cfg.val_size)
    if cfg.train_subset:
        keep = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        keep = keep[:cfg.train_subset]
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, y_train = x_train.to(device), y_train.to(device)
    if not cfg.val_size:
        x_held = y_held = None

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, **cfg.model_kwargs()).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    per_rank = x_train.shape[0] // world
    steps_per_epoch = max(per_rank // cfg.batch_size, 1)
    total_steps = steps_per_epoch * cfg.epochs

    start_epoch, best, history, warnings, diverged = 0, -1.0, [], [], None
    state_file = run.state
    if cfg.resume and state_file.exists():
        state = torch.load(state_file, map_location=device, weights_only=True)
        saved = state["config"]
        for key in ("method", "cas", "defense", "arch", "width", "batch_size", "seed", "train_subset"):
            if saved.get(key, "cas" if key == "defense" else None) != getattr(cfg, key):
                raise ValueError(f"--resume: {key} differs from the interrupted run "
                                 f"({saved.get(key)!r} there, {getattr(cfg, key)!r} now)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state["best"]
        # the state's own copy of the log records (a kill between the state and the log line loses none)
        history = state.get("history") or read_log(run.log)[:start_epoch]
        warnings = [r["warning"] for r in history if r.get("warning")]
        if main_proc:  # drop log lines of a partly finished epoch
            atomic_write(run.log, lambda t: Path(t).write_text(
                "".join(json.dumps(r) + "\n" for r in history)))
    elif main_proc:
        run.log.unlink(missing_ok=True)
        run.best.unlink(missing_ok=True)
    if main_proc:
        atomic_write(run.config, lambda t: Path(t).write_text(json.dumps(asdict(cfg), indent=2)))

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        net = torch.compile(net)
    lcfg = cfg.loss_config
    command = "python -m cas.train " + " ".join(shlex.quote(a) for a in cli_args(cfg))

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        gen_cpu = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        gen_dev = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch + 7)
        perm = torch.randperm(x_train.shape[0], generator=gen_cpu)[rank::world][:steps_per_epoch * cfg.batch_size]
        perm = perm.to(device)
        sums = torch.zeros(3, device=device)  # loss sum, correct, count
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and main_proc), file=sys.stderr)
        stopped = False
        for it in bar:
            idx = perm[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            xb, yb = cdata.augment(x_train[idx], gen_dev), y_train[idx]
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(cfg, epoch * steps_per_epoch + it, total_steps)
            loss, logits = train_step(model, net, opt, xb, yb, lcfg, gen_dev)
            sums += torch.stack([loss.float() * len(yb), (logits.argmax(1) == yb).sum().float(),
                                 torch.tensor(float(len(yb)), device=device)])
            if main_proc and it % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if run.stop_requested():
                stopped = True
                break
        if world > 1:
            dist.all_reduce(sums)
            flag = torch.tensor(float(stopped), device=device)
            dist.all_reduce(flag)
            stopped = bool(flag.item())
        if stopped:
            if main_proc:
                _append(run.log, {"event": "stopped", "epoch": epoch + 1, "completed_epochs": epoch})
            break
        model.eval()
        # train_acc: on the examples trained on, with training-mode masks (for CAS: the label's row,
        # so it reads higher than any test-time accuracy)
        record = {"epoch": epoch + 1, "lr": round(opt.param_groups[0]["lr"], 6),
                  "loss": round(float(sums[0] / sums[2]), 4), "train_acc": round(float(sums[1] / sums[2] * 100), 2)}
        if main_proc and x_held is not None:
            record.update(check_heldout(model, x_held, y_held, cfg, device))
        seconds = time.time() - t0
        record.update(images=int(sums[2]), seconds=round(seconds, 2), images_per_s=round(float(sums[2]) / seconds, 1))
        if not math.isfinite(record["loss"]):  # the same on every rank: the sums are all-reduced
            diverged = (f"TRAINING DIVERGED at epoch {epoch + 1}: the loss is not finite. Training stops; the "
                        f"best epoch before it is kept in best.safetensors. Try a smaller --lr.")
            if main_proc:
                _warn(out, record, warnings, diverged)
                _append(run.log, record)
                _append(run.log, {"event": "diverged", "epoch": epoch + 1})
            break
        if main_proc:
            score = record.get("heldout_robust" if lcfg.adversarial else "heldout_clean", -record["loss"])
            warning = collapse_warning(score, best, epoch + 1) if lcfg.adversarial else None
            if warning:
                _warn(out, record, warnings, warning)
            improved = score > best
            if improved:
                best = score
                card = ModelCard.for_model(model, method=cfg.method, epsilon=cfg.epsilon, epochs=cfg.epochs,
                                           best_epoch=epoch + 1, data=f"CIFAR-10 ({data_name})",
                                           command=command, train_config=asdict(cfg), description=cfg.description,
                                           precision="bf16 autocast" if cfg.amp and fast_bf16(device) else "fp32",
                                           heldout={"images": cfg.val_size, "split": "validation (training set)",
                                                    **{k: record[k] for k in record
                                                       if k.startswith(("heldout", "robust"))}},
                                           warnings=warnings)
                save_checkpoint(run.best, model, card)
            record["best_epoch"] = epoch + 1 if improved else (history[-1]["best_epoch"] if history else epoch + 1)
            history.append(record)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                     "best": best, "config": asdict(cfg), "history": history}
            atomic_write(state_file, lambda t: torch.save(state, t))
            _append(run.log, record)
            if on_epoch:
                on_epoch(record)
            if cfg.progress:
                print(json.dumps(record), file=sys.stderr, flush=True)
        if world > 1:
            dist.barrier()
    if main_proc and not run.stop_requested() and not diverged:
        _append(run.log, {"event": "finished", "epochs": cfg.epochs})
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if diverged:
        raise TrainingDiverged(diverged)
    return run.best


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message says when, and what was kept."""


def _warn(out: Path, record: dict, warnings: list[str], text: str) -> None:
    """Say ``text`` loudly: in the epoch's log record, on stderr and in the best checkpoint's card."""
    record["warning"] = text
    warnings.append(text)
    print("\n!!! " + text + "\n", file=sys.stderr, flush=True)
    best = RunFolder(out).best
    if best.exists():
        update_card(best, warnings=warnings)


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_log(path: Path) -> list[dict]:
    """Epoch records of a run's log (event lines and a torn last line are skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "epoch" in r and "event" not in r:
            out.append(r)
    return out



def build_parser() -> argparse.ArgumentParser:
    """The command line, built from TrainConfig's fields: their types, help, choices and defaults."""
    ap = argparse.ArgumentParser(prog="python -m cas.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text, choices = f.metadata["help"], f.metadata["choices"]
        if f.type in ("bool", bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                            help=f"{help_text} (default: {'on' if f.default else 'off'})")
        else:
            typ = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            ap.add_argument(flag, type=typ, default=f.default, choices=choices, help=help_text)
    return ap


def cli_args(cfg: TrainConfig) -> list[str]:
    """The command-line arguments that reproduce ``cfg`` (defaults left out)."""
    args = []
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if f.name in ("resume", "progress", "device") or v == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + f.name.replace("_", "-"))
        else:
            args += [flag, str(v)]
    return args


def main(argv=None):
    cfg = TrainConfig(**vars(build_parser().parse_args(argv)))
    try:
        best = train(cfg)
    except (ValueError, cdata.DataNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")


if __name__ == "__main__":
    main()
