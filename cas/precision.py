"""Fast arithmetic where the hardware has it: bf16 autocast and channels_last.

bf16 pays off only where the hardware computes it natively: CUDA GPUs with bf16, and CPUs with
AVX-512 BF16 or AMX (on other CPUs oneDNN emulates it, and it is slower than fp32). ``CAS_FP32=1`` in
the environment forces fp32 everywhere, for comparisons or odd hardware.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

_NATIVE_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512 BF16, AMX) and aarch64 (BF16)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs that compute bf16 in hardware (read from /proc/cpuinfo; False where unknown)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return bool(_NATIVE_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def fast_bf16(device) -> bool:
    """Whether bf16 autocast speeds up work on ``device`` (and fp32 is not forced)."""
    if os.environ.get("CAS_FP32", "") not in ("", "0"):
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device, enabled: bool = True):
    """bf16 autocast on ``device`` when ``enabled`` and the hardware does bf16 natively; a no-op
    context otherwise. Losses and judgements should still be taken in fp32 (``.float()``)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and fast_bf16(device))


@contextlib.contextmanager
def threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: leave the setting alone), then restore.

    PyTorch keeps this setting per calling thread (OpenMP), so a web server can give one thread
    to a single-image attack, which is bound by the cost of waking threads rather than by
    arithmetic, and all cores to batch work in another session, at the same time."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def all_cores() -> int:
    """Threads for batch work: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
