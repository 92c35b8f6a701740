"""Wall-clock time per pipeline stage.

Stages running on a CUDA device are asynchronous; :class:`StageTimes` synchronises
the device at the end of each timed block (when given one) so the time lands on the
stage that did the work. The cost is one sync per batch, not per face.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator


class StageTimes:
    """Accumulates seconds and call counts per stage name."""

    def __init__(self, device: Any = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._sync = None
        if device is not None and getattr(device, "type", None) == "cuda":
            import torch

            self._sync = lambda: torch.cuda.synchronize(device)

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds
        self.calls[stage] += 1

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {"seconds": round(self.seconds[name], 6), "calls": self.calls[name]}
            for name in self.seconds
        }
