"""Peak memory of inference: what a model needs beyond what the process already holds.

Weight sharing shrinks the weights but not the activations; quantization shrinks both; FLOPs see neither.
On a GPU this is ``torch.cuda.max_memory_allocated`` above the allocation before the call. On the CPU torch
has no allocation counter, so we take the survey's practical measure, the growth of the process's resident
set: freed memory is first handed back to the OS (``gc`` and glibc's ``malloc_trim`` where it exists), then a
sampling thread records the largest resident set while the call runs. Activations of a pass are freed
between passes, so the peak of a few passes is the peak of one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from collections.abc import Callable
from typing import Any

import psutil
import torch

_MB = 1024.0**2


def _release_freed_memory() -> None:
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)


def _peak_rss_growth_mb(call: Callable[[], Any], passes: int, interval_s: float) -> float:
    process = psutil.Process()
    _release_freed_memory()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(passes):
            call()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, process.memory_info().rss)
    return (peak - baseline) / _MB


def _peak_cuda_growth_mb(call: Callable[[], Any], passes: int) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    for _ in range(passes):
        call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - baseline) / _MB


def peak_memory_mb(
    call: Callable[[], Any], passes: int = 3, cuda: bool = False, interval_s: float = 0.001
) -> float:
    """Megabytes ``call`` needs at its peak beyond what was allocated before it (see the module docstring)."""
    return _peak_cuda_growth_mb(call, passes) if cuda else _peak_rss_growth_mb(call, passes, interval_s)
