"""Training throughput: the trainer's step (``cas.train.train_step``) vs an fp32 reference loop.

The reference is written in the style of the usual public CAS/AT code: fp32, contiguous (NCHW)
tensors, data from a torch DataLoader with per-sample augmentation, the attack loop written out. Ours:
the exact step ``cas.train`` runs (batched augmentation of uint8 data on the device, bf16 autocast and
channels_last where the hardware does bf16 natively). Same model, batch size, recipe and images; one
process; the script prints images/s and the ratio.

    python benchmarks/train_speed.py                       # CPU: width 16, batch 128, fgsm_rs
    python benchmarks/train_speed.py --recipe pgd --width 64 --batch-size 512 --images 10240  # GPU
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cas import create_model
from cas import data as cdata
from cas.cli import HelpFormatter
from cas.precision import fast_bf16
from cas.train import TrainConfig, make_optimizer, train_step

EPS = 8 / 255


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_epoch(model, x_u8, y, device, batch_size, steps, alpha, aux_weight=2.0):
    """fp32, DataLoader with per-sample augmentation, the attack loop written out as usual."""
    import torchvision.transforms.v2 as T
    from torch.utils.data import DataLoader, TensorDataset

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

    class Aug(TensorDataset):
        def __getitem__(self, i):
            img, label = super().__getitem__(i)
            return tf(img).float() / 255, label

    loader = DataLoader(Aug(x_u8, y), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=4 if device.type == "cuda" else 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def loss_of(x, yb, labels=None):
        logits, aux = model.forward_aux(x, labels)
        loss = F.cross_entropy(logits, yb)
        if aux:
            loss = loss + aux_weight * torch.stack([F.cross_entropy(a, yb) for a in aux]).mean()
        return loss

    n = 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        model.eval()
        x_adv = (xb + torch.empty_like(xb).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            grad = torch.autograd.grad(loss_of(x_adv, yb), x_adv)[0]
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), xb - EPS), xb + EPS).clamp(0, 1)
        model.train()
        loss = loss_of(x_adv, yb, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(yb)
    return n


def our_epoch(model, x_dev, y_dev, cfg: TrainConfig):
    """The inner loop of cas.train: the same ``train_step``, without logging and checkpointing."""
    opt = make_optimizer(model, cfg)
    gen = torch.Generator(device=x_dev.device).manual_seed(0)
    perm = torch.randperm(x_dev.shape[0], device=x_dev.device)
    n = 0
    for i in range(0, x_dev.shape[0] - cfg.batch_size + 1, cfg.batch_size):
        idx = perm[i:i + cfg.batch_size]
        xb, yb = cdata.augment(x_dev[idx], gen), y_dev[idx]
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        train_step(model, model, opt, xb, yb, cfg.loss_config, gen)
        n += len(yb)
    return n


def timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    n = fn()
    _sync(device)
    return n, time.perf_counter() - t



def main():
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--images", type=int, default=10240 if cuda else 2048, help="images per timed epoch")
    ap.add_argument("--width", type=int, default=64 if cuda else 16, help="ResNet-18 width")
    ap.add_argument("--batch-size", type=int, default=512 if cuda else 128, help="the same for both loops")
    ap.add_argument("--recipe", choices=["pgd", "fgsm_rs"], default="pgd" if cuda else "fgsm_rs",
                    help="training examples: PGD-k (step eps/4) or FGSM with a random start (step 1.25 eps)")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps (recipe pgd)")
    ap.add_argument("--cas", action=argparse.BooleanOptionalAction, default=True, help="also time AT+CAS")
    ap.add_argument("--data", default=None, help="CIFAR-10 location (default: $CAS_DATA or the usual places)")
    a = ap.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    steps, alpha = (a.steps, EPS / 4) if a.recipe == "pgd" else (1, 1.25 * EPS)
    x, y = cdata.load("train", a.data)
    x, y = x[:a.images], y[:a.images]
    cfg = TrainConfig(method="at", recipe=a.recipe, steps=steps, batch_size=a.batch_size)
    rows = []
    for label, cas_on in ([("AT+CAS", True)] if a.cas else []) + [("AT", False)]:
        torch.manual_seed(0)
        ref_model = create_model("resnet18", width=a.width, cas=cas_on).to(device)
        reference_epoch(ref_model, x[:2 * a.batch_size], y[:2 * a.batch_size], device, a.batch_size, 1, alpha)
        n_ref, t_ref = timed(lambda: reference_epoch(ref_model, x, y, device, a.batch_size, steps, alpha), device)
        torch.manual_seed(0)
        model = create_model("resnet18", width=a.width, cas=cas_on).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        x_dev, y_dev = x.to(device), y.to(device)
        our_epoch(model, x_dev[:2 * a.batch_size], y_dev[:2 * a.batch_size], cfg)  # warm-up
        n_our, t_our = timed(lambda: our_epoch(model, x_dev, y_dev, cfg), device)
        ref_ips, our_ips = n_ref / t_ref, n_our / t_our
        rows.append((label, ref_ips, our_ips, our_ips / ref_ips, 49000 / our_ips))
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; ours in {'bf16 autocast + channels_last' if fast_bf16(device) else 'fp32'}; "
          f"ResNet-18 width {a.width}; batch {a.batch_size}; recipe {a.recipe}"
          f"{f' ({steps} steps)' if a.recipe == 'pgd' else ''}; {a.images} images per timed epoch")
    print("| model | reference fp32 img/s | ours img/s | ratio | ours s per 49k-image epoch |")
    print("|---|---|---|---|---|")
    for label, r, o, ratio, sec in rows:
        print(f"| {label} | {r:,.0f} | {o:,.0f} | {ratio:.2f}x | {sec:.1f} |")


if __name__ == "__main__":
    main()
