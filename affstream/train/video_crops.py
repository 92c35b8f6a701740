"""Face crops from videos, in the organizers' layout (for ``affstream finetune image``).

:func:`extract_crops` runs every annotated person's video ``ROOT/videos/VIDEO.EXT``
through affstream's own pipeline (decode -> MTCNN detect -> track -> align, no
backbone call; :func:`affstream.pipeline.offline.iter_face_crops`), once per video, and
writes the person's aligned face crops as

    OUT/cropped_aligned/PERSON/%05d.jpg     frame k = 1-based frame number, gaps allowed
    OUT/cropped_aligned/PERSON/.complete    JSON: what made the folder (written last)

S x S RGB JPEGs, S the backbone's input side, exactly the pixels the backbone would
embed (the same alignment as ``affstream annotate`` and ``--source videos``). Only frames
1..n_frames of the person's annotation get a crop; frames where the person's face was
not found have none (as in the organizers' crops).

Which face is the person: the rule of the feature bank's videos source (module
docstring of :mod:`affstream.train.features`): whole tracks, never a per-frame
choice; one person is the chain of tracks with the largest dominance, the two people of
``VIDEO_left`` / ``VIDEO_right`` the dominant pair of tracks seen together, split by
mean box-centre x, each grown into a chain. The crops of a person are therefore those
of the frames where ``build_feature_bank(..., source="videos")`` with the same pipeline
and backbone marks the person present.

Bounded memory: crops are never held for a whole video. While a video decodes, each
face crop a track keeps is written at once (by a small pool of JPEG writers with a
bounded queue) to ``OUT/.tracks/VIDEO/tracks/TRACK/%05d.jpg``; only the tracks' boxes
stay in memory. Once the video is decoded, the people's tracks are chosen, the chosen
tracks' files are moved (:func:`os.replace`, same file system) into
``OUT/.tracks/VIDEO/people/PERSON/``, the ``.complete`` marker is written into it, and
the whole folder is renamed onto ``OUT/cropped_aligned/PERSON``: a person's folder only
ever appears complete. ``OUT/.tracks/VIDEO`` is then deleted with the unchosen tracks.

Resumable: a person whose folder holds ``.complete`` is skipped (a video whose people
are all complete is not decoded); a video interrupted part-way is redone from scratch
(its leftover ``OUT/.tracks/VIDEO`` is removed first). A person folder without the
marker was not written here: the person fails rather than it being overwritten.

Failures: a missing or unreadable video, or an annotation whose length differs from
the decoded video by more than ``LENGTH_TOLERANCE_FRAMES``, fails the people concerned
(logged, in the summary's ``"failed"``) and the run goes on. An output that cannot be
written (a full disk) stops the run with an OutputError; people already written stay.
Crops are never written into the dataset root itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AffstreamError, ConfigError, DataError, OutputError
from ..files import atomic_write_text, check_output_folder, make_folder, output_error
from .affwild import SPLITS, PersonLabels, check_length, scan_affwild
from .features import (
    CROPS_DIR,
    VIDEO_EXTENSIONS,
    VIDEOS_DIR,
    choose_people_tracks,
    collect_tracks,
    video_file,
)

log = logging.getLogger("affstream")

TRACKS_DIR = ".tracks"
"""Working folder under the output root: ``.tracks/VIDEO`` while a video is extracted."""
COMPLETE_MARKER = ".complete"
"""File in a person's crop folder that says the folder is complete (JSON, written last)."""
JPEG_WRITERS = 4
"""Threads encoding and writing crops while a video decodes."""
_PENDING_MAX = 64  # crops waiting for a writer: bounds memory however fast decoding is

Progress = Callable[[str, int, int], None]


class _CropWriter:
    """JPEG writes on a few threads, at most ``_PENDING_MAX`` waiting (the caller blocks)."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._pool = ThreadPoolExecutor(max_workers=JPEG_WRITERS, thread_name_prefix="affstream-crops")
        self._pending: deque[Future] = deque()
        self.written = 0

    def _write(self, path: Path, crop: np.ndarray) -> None:
        from PIL import Image

        try:
            Image.fromarray(crop).save(path, format="JPEG", quality=self.quality)
        except OSError as exc:
            raise output_error(path, exc) from None

    def submit(self, path: Path, crop: np.ndarray) -> None:
        while len(self._pending) >= _PENDING_MAX:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, path, np.ascontiguousarray(crop)))
        self.written += 1

    def finish(self) -> None:
        """Wait for every write; the first failure is raised."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


def _frame_name(row: int) -> str:
    return f"{row + 1:05d}.jpg"


def _remove_tree(path: Path) -> None:
    """Remove ``path`` (a folder of this module's own making) if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The ``.complete`` marker of a person's folder, or None if the folder is not complete."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _foreign_folder(target: Path) -> str | None:
    """Why ``target`` (a person folder without marker) cannot be written, or None if it
    is absent or empty (then it is replaced)."""
    if not os.path.lexists(target):
        return None
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return None
    return (f"{target}: exists but was not written by crop extraction (no {COMPLETE_MARKER}); "
            "move it away or choose another output folder")


def _same_place(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _load_stages(pipeline: Any, backbone: str, device: str):
    from ..config import PipelineConfig, load_pipeline
    from ..pipeline import load_stages

    config = pipeline if isinstance(pipeline, PipelineConfig) else load_pipeline(pipeline)
    config = config.with_overrides(device=device, embed={"backbone": backbone})
    return load_stages(config, with_head=False)


def extract_crops(
    root: str | Path,
    out_root: str | Path,
    *,
    task: str = "expr",
    splits: Iterable[str] = SPLITS,
    pipeline: Any = "default",
    backbone: str,
    device: str = "auto",
    jpeg_quality: int = 95,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the face crops of every annotated person of ``task`` in ``splits`` whose
    video is under ``ROOT/videos`` to ``OUT/cropped_aligned/PERSON/%05d.jpg`` (see the
    module docstring for the layout, the choice of tracks and resuming).

    pipeline: preset name, TOML path or PipelineConfig (detection, tracking and
    alignment options); backbone: its spec fixes the crop side S (the backbone is
    loaded but never run); device: "auto", "cpu", "cuda", ...; jpeg_quality: 1..100.
    ``progress(video, done, total)`` is called after each video (skipped and failed
    ones too).

    Returns a summary: ``{"people": people written now, "skipped_existing": people
    already complete, "failed": {name: message}, "crops": crops written now, "frames":
    annotated frames of the people written now, "videos": videos decoded}``. Raises
    ConfigError for bad options (``out_root`` the dataset root itself, an unknown task,
    split, preset or backbone), DataError for a root without annotations or without a
    ``videos`` folder, OutputError when the output cannot be written.
    """
    root, out_root = Path(root), Path(out_root)
    splits = tuple(splits)
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality must be an integer from 1 to 100, got {jpeg_quality!r}")
    if _same_place(root, out_root):
        raise ConfigError(f"output folder {out_root} is the dataset root {root}; crops are never written "
                          "into the dataset root, give another output folder")
    people = scan_affwild(root, splits=splits, tasks=(task,))
    if not people:
        raise DataError(f"{root}: no {task} annotation files in {', '.join(splits)}; check the dataset root")
    if not (root / VIDEOS_DIR).is_dir():
        raise DataError(f"{root / VIDEOS_DIR}: no videos folder; put the videos there as VIDEO.mp4 "
                        "(one per annotated video) or give the root that holds videos/")
    check_output_folder(out_root)

    summary: dict[str, Any] = {"people": 0, "skipped_existing": 0, "failed": {}, "crops": 0,
                               "frames": 0, "videos": 0}
    groups: dict[str, list[PersonLabels]] = {}
    for person in people.values():
        groups.setdefault(person.video, []).append(person)
    crops_root = out_root / CROPS_DIR
    plans: list[tuple[str, Path | None, list[PersonLabels]]] = []
    for video, group in groups.items():
        todo = []
        for person in group:
            target = crops_root / person.name
            marker = _read_marker(target)
            if marker is not None:
                summary["skipped_existing"] += 1
                made_with = marker.get("backbone")
                if made_with is not None and made_with != backbone:
                    log.warning("%s: complete, made for backbone %s, not %s; kept (remove the folder to "
                                "redo it)", target, made_with, backbone)
                continue
            problem = _foreign_folder(target)
            if problem is not None:
                _fail(summary, person.name, problem)
                continue
            todo.append(person)
        path = video_file(root, video)
        if todo and path is None:
            message = (f"{root / VIDEOS_DIR}: no video file for '{video}' ({', '.join(VIDEO_EXTENSIONS)}); "
                       "add the video or leave the person out")
            for person in todo:
                _fail(summary, person.name, message)
            todo = []
        plans.append((video, path, todo))

    stages = None
    total = len(plans)
    try:
        for done, (video, path, todo) in enumerate(plans, start=1):
            if todo:
                if stages is None:
                    stages = _load_stages(pipeline, backbone, device)
                summary["videos"] += 1
                _extract_video(summary, path, todo, stages, out_root, jpeg_quality, backbone)
            if progress is not None:
                progress(video, done, total)
    finally:
        tracks_root = out_root / TRACKS_DIR
        if tracks_root.is_dir():
            with contextlib.suppress(OSError):
                tracks_root.rmdir()  # only when empty
    if summary["failed"]:
        log.error("%d of %d people failed: %s", len(summary["failed"]), len(people),
                  "; ".join(summary["failed"].values()))
    return summary


def _fail(summary: dict[str, Any], name: str, message: str) -> None:
    log.error("%s: %s", name, message)
    summary["failed"][name] = message


def _extract_video(summary: dict[str, Any], path: Path, people: list[PersonLabels], stages,
                   out_root: Path, quality: int, backbone: str) -> None:
    """Decode one video, write its people's crops; video failures fail its people."""
    video = people[0].video
    staging = out_root / TRACKS_DIR / video
    _remove_tree(staging)  # a leftover of an interrupted run: redone from scratch
    try:
        tracks, n_decoded = _decode_tracks(path, staging / "tracks", stages, quality,
                                           max(p.n_frames for p in people))
    except OutputError:
        _remove_tree(staging)
        raise
    except AffstreamError as exc:
        _remove_tree(staging)
        for person in people:
            _fail(summary, person.name, str(exc))
        return
    try:
        chosen = choose_people_tracks(path, tracks, people)
        ready = []
        for person in people:
            target = out_root / CROPS_DIR / person.name
            try:
                check_length(person, n_decoded, str(path))
            except DataError as exc:
                _fail(summary, person.name, str(exc))
                continue
            problem = _foreign_folder(target)
            if problem is not None:
                _fail(summary, person.name, problem)
                continue
            ready.append((person, target))
        # a track chosen for two people (never for a left/right pair) is copied, not moved
        uses = Counter(t for person, _ in ready for t in chosen[person.name])
        info = {"video": path.name, "n_decoded": n_decoded, "image_size": int(stages.backbone.image_size),
                "backbone": backbone, "pipeline": stages.config.name}
        for person, target in ready:
            n_crops = _publish_person(person, chosen[person.name], tracks, staging, target, uses, info)
            summary["people"] += 1
            summary["crops"] += n_crops
            summary["frames"] += person.n_frames
            log.info("%s: track(s) %s chosen, %d crops for %d frames written to %s", person.name,
                     sorted(chosen[person.name]), n_crops, person.n_frames, target)
            if not n_crops:
                log.warning("%s: no face of this person found in %s; its folder holds no crop", person.name, path)
    finally:
        _remove_tree(staging)


def _decode_tracks(path: Path, tracks_dir: Path, stages, quality: int, n_keep: int):
    """Run the pipeline over ``path``; write each kept face crop of frames 1..n_keep to
    ``tracks_dir/TRACK/%05d.jpg``. Returns (tracks' boxes, number of decoded frames)."""
    from ..pipeline.offline import iter_face_crops
    from ..records import DecodeStats

    made: set[int] = set()
    writer = _CropWriter(quality)

    def keep(track: int, row: int, crop: np.ndarray) -> None:
        if row >= n_keep:
            return
        folder = tracks_dir / str(track)
        if track not in made:
            make_folder(folder)
            made.add(track)
        writer.submit(folder / _frame_name(row), crop)

    stats = DecodeStats()
    stream = iter_face_crops(path, stages, stats=stats)
    try:
        tracks, n_decoded = collect_tracks(stream, keep)
        writer.finish()
    finally:
        stream.close()  # stops the decode thread if a write failed part-way
        writer.close()
    if stats.errors:
        log.warning("%s: %d decode error(s); its frame count %d may differ from the organizers'",
                    path, stats.errors, n_decoded)
    return tracks, n_decoded


def _publish_person(person: PersonLabels, ids: list[int], tracks, staging: Path, target: Path,
                    uses: Counter, info: dict[str, Any]) -> int:
    """Gather ``person``'s crops from the chosen tracks into a folder of its own, mark it
    complete, rename it onto ``target``. Returns the number of crops."""
    folder = staging / "people" / person.name
    try:
        make_folder(folder)
        n_crops = 0
        for track in ids:
            uses[track] -= 1
            for row in tracks[track].rows:
                if row >= person.n_frames:
                    break
                source = staging / "tracks" / str(track) / _frame_name(int(row))
                dest = folder / _frame_name(int(row))
                if not source.is_file() or dest.exists():
                    continue
                if uses[track] > 0:
                    shutil.copyfile(source, dest)
                else:
                    os.replace(source, dest)
                n_crops += 1
        marker = dict(info, person=person.name, n_frames=person.n_frames, crops=n_crops,
                      tracks=sorted(int(t) for t in ids))
        atomic_write_text(folder / COMPLETE_MARKER, json.dumps(marker, indent=1) + "\n")
        make_folder(target.parent)
        if os.path.lexists(target):  # checked: an empty folder left by someone
            target.rmdir()
        os.rename(folder, target)
    except OSError as exc:
        raise output_error(target, exc, "cannot write the person's crop folder") from None
    return n_crops
