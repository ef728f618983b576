"""A sampling profiler of one thread, for timing where a long compile goes.

cProfile made the cold compile of the 4B decode step 3.3x slower on the H200 (128 s against 39 s for
stock's, 2026-12-01), so its seconds are not the compile's. This samples the profiled thread's Python
stack from a daemon thread every ``interval`` seconds (``sys._current_frames``): a few percent of
overhead. Each sample is weighted by the wall time since the previous one, because the sampler cannot
run while the profiled thread holds the GIL in a long C call (counting samples alone missed a third of
a compile's seconds); such a call's time goes to the stack seen when it lets go. Per function
(``folder/file.py:qualified name``) it sums the seconds with the function anywhere on the stack
(cumulative) and on top (self).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import FrameType


def function_name(frame: FrameType) -> str:
    code = frame.f_code
    return f"{'/'.join(Path(code.co_filename).parts[-2:])}:{getattr(code, 'co_qualname', code.co_name)}"


class StackSampler:
    """``with StackSampler() as s: ...`` samples the thread that entered it; ``s.seconds()`` reads it."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.cumulative: defaultdict[str, float] = defaultdict(float)
        self.own: defaultdict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StackSampler:
        target = threading.get_ident()
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, target: int) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(target)
            now = time.perf_counter()
            elapsed, last = now - last, now
            if frame is None:
                continue
            self.own[function_name(frame)] += elapsed
            seen = set()
            while frame is not None:
                seen.add(function_name(frame))
                frame = frame.f_back
            for name in seen:
                self.cumulative[name] += elapsed

    def seconds(self) -> dict[str, dict[str, float]]:
        """{"cumulative": {function: s}, "self": {function: s}}."""
        return {
            "cumulative": {k: round(v, 3) for k, v in self.cumulative.items()},
            "self": {k: round(v, 3) for k, v in self.own.items()},
        }
