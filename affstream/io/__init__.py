"""Sources and decoding: files (and later live streams) to upright RGB frames with PTS times."""

from __future__ import annotations

from .decode import count_frames, iter_frames, probe
from .prefetch import prefetch

__all__ = ["count_frames", "iter_frames", "prefetch", "probe"]
