"""GPU timing by CUDA/HIP-graph replay, shared by autotune.sweep and the bench/ scripts.

A microsecond kernel timed launch by launch measures the Python launcher, not the kernel; a graph
of the calls replayed back to back measures only the device.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence


def graph_ms(fns: Sequence[Callable[[], Any]], reps: int = 20, repeat: int = 1,
             warm_replays: int = 1) -> float:
    """Median milliseconds per call of `fns`, captured `repeat` times back to back in one graph
    (each fn warmed twice on a side stream first, so that compiles and allocations stay out of the
    capture), replayed `warm_replays` times, then `reps` times under CUDA events."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            for f in fns:
                f()
    for _ in range(warm_replays):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times) / (len(fns) * repeat)
