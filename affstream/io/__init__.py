"""Sources and decoding: open a file (later a device or URL) once, get its metadata and
its upright RGB frames timed by their PTS."""

from __future__ import annotations

from .prefetch import prefetch
from .sources import VideoSource, count_frames, iter_frames, open_source, probe

__all__ = ["VideoSource", "count_frames", "iter_frames", "open_source", "prefetch", "probe"]
