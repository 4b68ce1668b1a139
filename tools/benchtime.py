"""Timing shared by the peer benchmarks in tools/ (imported, not run)."""

import time


def median_ms(fn, repeat, sync=lambda: None):
    """Median wall time of `fn` in milliseconds over `repeat` runs, after one warm-up run;
    `sync` waits for asynchronous work (a GPU) before the clock is read."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[len(times) // 2]
