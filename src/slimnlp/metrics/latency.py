"""Wall-clock latency, measured so that two models can be compared on one machine.

- **Interleaved rounds.** Every round times each model once, in turn, on the same input, so frequency
  scaling, other load and cache state hit all models alike; the speed-up is the ratio of the medians.
- **Warm-up** passes first (allocator, kernel selection, lazy initialisation), untimed.
- **A fixed thread count** (``torch_threads``): the config's number, recorded with the result, so a figure
  is never "whatever the machine defaulted to".
- **On a GPU**, CUDA events around each pass and a synchronisation before reading them: ``perf_counter``
  would time the kernel launches, not the kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (``None``: leave torch's setting); yields the count in
    effect and restores the previous one afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def inference_call(model: torch.nn.Module, inputs: Mapping[str, Any]) -> Callable[[], Any]:
    """A no-argument forward pass of ``model`` on ``inputs`` under ``inference_mode``: what is timed."""

    def call() -> Any:
        with torch.inference_mode():
            return model(**inputs)

    return call


def _time_cpu_ms(fn: Callable[[], Any]) -> float:
    import time

    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def _time_cuda_ms(fn: Callable[[], Any]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def interleaved_times_ms(
    calls: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, cuda: bool = False
) -> dict[str, list[float]]:
    """Milliseconds of each of ``repeats`` calls per name, the names timed in turn within every round."""
    timer = _time_cuda_ms if cuda else _time_cpu_ms
    for call in calls.values():
        for _ in range(warmup):
            call()
    if cuda:
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timer(call))
    return times


def percentiles(times_ms: list[float]) -> dict[str, float]:
    """``p50`` (the median: the figure speed-ups are ratios of) and ``p90`` (the tail a service sees)."""
    p50, p90 = np.percentile(np.asarray(times_ms), [50, 90])
    return {"p50": float(p50), "p90": float(p90)}
