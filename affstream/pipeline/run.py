"""What every schedule does around the steps of one run: count the rows it emits and
build the run's report. The offline schedule uses it today; the live one will too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

from ..records import DecodeStats, FrameAnnotation, RunCounts, RunReport, VideoInfo
from ..runtime import StageTimes
from ..version import __version__
from . import Stages

MEANINGLESS_WARNING = (
    "SMOKE/TEST RUN: random model weights; the affect outputs are meaningless. "
    "Use a pretrained backbone (e.g. the default pipeline) for real annotations."
)


class RowCounter:
    """Counts rows, frames, frames with faces and tracks as rows flow through it.

    on_frame(done): called once per frame, with the number of frames that have rows.
    """

    def __init__(self, on_frame: Callable[[int], None] | None = None) -> None:
        self.counts = RunCounts()
        self.track_ids: set[int] = set()
        self.on_frame = on_frame
        self._last_frame: int | None = None

    def count(self, rows: Iterable[FrameAnnotation]) -> Iterator[FrameAnnotation]:
        """Yield ``rows`` unchanged, counting them (rows of one frame are consecutive)."""
        counts = self.counts
        for row in rows:
            counts.rows += 1
            if row.success:
                self.track_ids.add(row.track_id)
            if row.frame_index != self._last_frame:
                self._last_frame = row.frame_index
                counts.frames_written += 1
                counts.frames_with_faces += int(row.success)
                if self.on_frame is not None:
                    self.on_frame(counts.frames_written)
            yield row

    def snapshot(self, stats: DecodeStats) -> RunCounts:
        """A copy of the counts so far, completed with the decoder's tally."""
        return dataclasses.replace(
            self.counts,
            frames_decoded=stats.frames,
            tracks=len(self.track_ids),
            decode_errors=stats.errors,
            frames_without_pts=stats.missing_pts,
            decode_error_messages=list(stats.error_messages),
        )


def build_report(stages: Stages, info: VideoInfo, counts: RunCounts, times: StageTimes, wall_s: float,
                 outputs: dict[str, str] | None = None) -> RunReport:
    """The run's report: source, configuration, models, counts, timings.

    wall_s: seconds of the run (the loop over frames, models already loaded).
    outputs: names of the files written, e.g. {"csv": "clip.csv", "json": "clip.json"}.
    """
    card = stages.head.card
    meaningful = stages.meaningful
    return RunReport(
        affstream_version=__version__,
        meaningful=meaningful,
        warning=None if meaningful else MEANINGLESS_WARNING,
        source=info,
        outputs=dict(outputs or {}),
        config=stages.config.to_dict(),
        device=str(stages.device),
        backbone=stages.backbone.identity(),
        head={
            **stages.head_identity,
            "tasks": list(card.tasks),
            "window_length": card.window_length,
            "window_stride": card.window_stride,
            "causal": card.causal,
            "meaningful": card.meaningful,
            "au_thresholds": list(card.au_thresholds),
        },
        counts=counts,
        wall_s=wall_s,
        frames_per_s=counts.frames_written / max(wall_s, 1e-9),
        stage_times=times.to_dict(),
    )
