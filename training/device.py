"""Where the model runs: the torch device, CPU thread counts, bf16 autocast."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int = 0, num_workers: int = 1, world: int = 1) -> Iterator[None]:
    """On CPU, run with ``threads`` torch threads (0 = cores / (ranks x (1 + loader workers))), then restore.

    On this 2-vCPU machine 2 intra-op threads are several times slower than 1 for these small models.
    """
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // (world * (1 + num_workers))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; plain fp32 on CPU."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
