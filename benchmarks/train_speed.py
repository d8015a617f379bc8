"""Throughput of one PGD-10 adversarial-training epoch: our trainer's step vs a reference loop.

The reference is written in the style of the usual public CAS/AT code: fp32, batch 128, no
channels_last, data from a torch DataLoader with per-sample CPU augmentation. Ours: the step
``cas.train`` runs (GPU-resident uint8 data, batched GPU augmentation, bf16 autocast, channels_last,
batch 512). Both run in the same process on the same data; the script prints images/s and the ratio.

    python benchmarks/train_speed.py --images 10240 [--cas/--no-cas] [--width 64]

On a CPU it runs too (use --images 512 --width 8), but the targets are for a GPU.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cas import create_model
from cas import data as cdata
from cas.losses import LossConfig, perturb, training_loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_epoch(model, x_u8, y, device, batch_size=128, steps=10, cas_beta=2.0):
    """fp32, DataLoader with per-sample augmentation, the attack loop written out as usual."""
    from torch.utils.data import DataLoader, TensorDataset
    import torchvision.transforms.v2 as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

    class Aug(TensorDataset):
        def __getitem__(self, i):
            img, label = super().__getitem__(i)
            return tf(img).float() / 255, label

    loader = DataLoader(Aug(x_u8, y), batch_size=batch_size, shuffle=True, num_workers=4 if device.type == "cuda" else 0,
                        drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    eps, alpha = 8 / 255, 2 / 255
    n = 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        model.eval()
        x_adv = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits, aux = model.forward_aux(x_adv)
            loss = F.cross_entropy(logits, yb)
            if aux:
                loss = loss + cas_beta * torch.stack([F.cross_entropy(a, yb) for a in aux]).mean()
            grad = torch.autograd.grad(loss, x_adv)[0]
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), xb - eps), xb + eps).clamp(0, 1)
        model.train()
        logits, aux = model.forward_aux(x_adv, yb)
        loss = F.cross_entropy(logits, yb)
        if aux:
            loss = loss + cas_beta * torch.stack([F.cross_entropy(a, yb) for a in aux]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(yb)
    return n


def our_epoch(model, x_dev, y_dev, device, batch_size=512, steps=10, channels_last=True, amp=True):
    """The inner loop of cas.train (same functions), without logging and checkpointing."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cfg = LossConfig("at", steps=steps)
    gen = torch.Generator(device=device).manual_seed(0)
    perm = torch.randperm(x_dev.shape[0], device=device)
    n = 0
    for i in range(0, x_dev.shape[0] - batch_size + 1, batch_size):
        idx = perm[i:i + batch_size]
        xb, yb = cdata.augment(x_dev[idx], gen), y_dev[idx]
        if channels_last and device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        ac = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
        model.eval()
        with ac:
            x_adv = perturb(model, xb, yb, cfg, generator=gen)
        model.train()
        with ac:
            loss, _ = training_loss(model, xb, yb, x_adv, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(yb)
    return n


def timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    n = fn()
    _sync(device)
    return n, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10240, help="images per timed epoch (subset of train)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--cas", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", default=None)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, y = cdata.load("train", a.data)
    x, y = x[:a.images], y[:a.images]
    rows = []
    for label, cas_on in ([("AT+CAS", True)] if a.cas else []) + [("AT", False)]:
        torch.manual_seed(0)
        ref_model = create_model("resnet18", width=a.width, cas=cas_on).to(device)
        reference_epoch(ref_model, x[:512], y[:512], device, steps=1)  # warm-up
        n_ref, t_ref = timed(lambda: reference_epoch(ref_model, x, y, device, steps=a.steps), device)
        torch.manual_seed(0)
        model = create_model("resnet18", width=a.width, cas=cas_on).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        x_dev, y_dev = x.to(device), y.to(device)
        our_epoch(model, x_dev[:1024], y_dev[:1024], device, steps=1)  # warm-up
        n_our, t_our = timed(lambda: our_epoch(model, x_dev, y_dev, device, steps=a.steps), device)
        ref_ips, our_ips = n_ref / t_ref, n_our / t_our
        rows.append((label, ref_ips, our_ips, our_ips / ref_ips, 50000 / our_ips))
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; ResNet-18 width {a.width}; "
          f"PGD-{a.steps}; {a.images} images per timed epoch")
    print("| model | reference img/s | ours img/s | ratio | ours s per 50k epoch |")
    print("|---|---|---|---|---|")
    for label, r, o, ratio, sec in rows:
        print(f"| {label} | {r:,.0f} | {o:,.0f} | {ratio:.2f}x | {sec:.1f} |")


if __name__ == "__main__":
    main()
