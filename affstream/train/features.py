"""Computing a feature bank from an Aff-Wild2-format dataset (``affstream features``).

Two sources of face images:

``crops`` (default): the organizers' aligned crops, ``ROOT/cropped_aligned/DIR/%05d.jpg``
    with 1-based frame numbers and gaps where no face was found. ``DIR`` is the person's
    name (``video3_left``) if that folder exists, else the video's name (``video3``).
    Any image size is accepted; each crop is resized to the backbone's input size
    (bicubic, antialiased) and normalised with the backbone's mean/std.

``videos``: ``ROOT/videos/VIDEO.EXT`` run through affstream's own pipeline
    (decode -> detect -> track -> align -> embed). Which detected face is the annotated
    person, frame by frame:

    - one-person video (``VIDEO.txt``): the largest face (box area);
    - two-person video (``VIDEO_left.txt`` / ``VIDEO_right.txt``): with two or more faces,
      the face whose box centre is leftmost / rightmost; with exactly one face, it goes
      to the side whose last chosen box centre is nearest to it (a side never chosen
      so far counts as infinitely far; with no history at all the frame stays missing
      for both sides), and the other side is missing in that frame.

Test people (``test_list``: one name per line, ``VIDEO`` or ``VIDEO_left`` /
``VIDEO_right``) have no annotation; they are stored with split ``Test_Set``, no
labels, and one row per frame 1..n_frames, where n_frames is

- source ``videos``: the number of frames decoded from the video;
- source ``crops``: the decoded frame count of ``ROOT/videos/VIDEO.EXT`` when that file
  exists, else the largest crop number (frames after the last crop cannot be known
  without the video: logged, and recorded as ``"n_frames_source": "crops"`` in the
  bank index so that export can report it).

In both cases a frame with a label but no face keeps its row, marked missing
(``present`` False, zero features): labels are never shifted. One person's failure
(unreadable video, length mismatch) is logged and reported in the summary; the run
goes on with the others.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import AffstreamError, ConfigError, DataError
from .affwild import (SPLITS, TASK_DIRS, TEST_SPLIT, PersonLabels, check_length, read_test_list,
                      scan_affwild, side_of, test_person)
from .bank import DTYPES, SOURCES, BankWriter

log = logging.getLogger("affstream")

CROPS_DIR = "cropped_aligned"
VIDEOS_DIR = "videos"
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
CROP_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
_CROP_NAME = re.compile(r"^(\d+)$")
_LOAD_THREADS = 4

Progress = Callable[[str, int, int], None]
_Result = tuple[PersonLabels, np.ndarray, np.ndarray, dict[str, Any]]
"""A person ready for the bank: labels, features, present flags, extra index fields."""


# --------------------------------------------------------------------------- crops


def list_crops(crop_dir: Path, n_frames: int) -> dict[int, Path]:
    """``{frame: path}`` of the crops in ``crop_dir`` for frames 1..n_frames.

    Files whose stem is not a frame number, frame 0 and frames beyond ``n_frames``
    are ignored (logged).
    """
    crops: dict[int, Path] = {}
    ignored = 0
    for entry in crop_dir.iterdir():
        match = _CROP_NAME.match(entry.stem)
        if entry.suffix.lower() not in CROP_EXTENSIONS or not match:
            continue
        frame = int(match.group(1))
        if 1 <= frame <= n_frames:
            crops[frame] = entry
        else:
            ignored += 1
    if ignored:
        log.warning("%s: %d crops outside frames 1..%d ignored", crop_dir, ignored, n_frames)
    return dict(sorted(crops.items()))


def find_crop_dir(root: Path, labels: PersonLabels) -> Path | None:
    """The crop folder of a person: ``cropped_aligned/NAME`` else ``cropped_aligned/VIDEO``."""
    for candidate in (root / CROPS_DIR / labels.name, root / CROPS_DIR / labels.video):
        if candidate.is_dir():
            return candidate
    return None


def _load_crop(path: Path, size: int) -> np.ndarray | None:
    """(size, size, 3) uint8 RGB, or None if the image cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable crop (%s); frame kept as missing", path, exc)
        return None


def _embed_uint8(backbone, images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, D) float32 features via ``backbone.encode_images``."""
    import torch

    mean = torch.tensor(backbone.mean, dtype=torch.float32, device=backbone.device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, dtype=torch.float32, device=backbone.device).view(1, 3, 1, 1)
    with torch.inference_mode():
        batch = torch.from_numpy(images).to(backbone.device).permute(0, 3, 1, 2).float().div_(255.0)
        batch = (batch - mean) / std
        return backbone.encode_images(batch).float().cpu().numpy()


def embed_crops(backbone, crops: dict[int, Path], n_frames: int, batch_size: int,
                dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (n_frames, D) in ``dtype`` and present (n_frames,) bool for ``crops``.

    Row k-1 is frame k; frames without a (readable) crop stay zero and not present.
    The next batch of JPEGs is decoded on threads while the current one is embedded.
    """
    features = np.zeros((n_frames, backbone.feature_dim), dtype=dtype)
    present = np.zeros(n_frames, dtype=bool)
    items = list(crops.items())
    chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    size = int(backbone.image_size)
    with ThreadPoolExecutor(max_workers=_LOAD_THREADS) as pool:
        def submit(chunk):
            return [pool.submit(_load_crop, path, size) for _, path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            images = [future.result() for future in pending]
            pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            frames = [frame for (frame, _), image in zip(chunk, images) if image is not None]
            images = [image for image in images if image is not None]
            if not images:
                continue
            rows = np.asarray(frames, dtype=np.int64) - 1
            features[rows] = _embed_uint8(backbone, np.stack(images))
            present[rows] = True
    return features, present


def _missing_crop_dir(root: Path, labels: PersonLabels) -> DataError:
    return DataError(f"{root / CROPS_DIR}: no crop folder '{labels.name}' or '{labels.video}'; "
                     "check the dataset root or use --source videos")


def _person_from_crops(root: Path, labels: PersonLabels, backbone, batch_size: int,
                       dtype: str) -> tuple[np.ndarray, np.ndarray]:
    crop_dir = find_crop_dir(root, labels)
    if crop_dir is None:
        raise _missing_crop_dir(root, labels)
    crops = list_crops(crop_dir, labels.n_frames)
    return embed_crops(backbone, crops, labels.n_frames, batch_size, dtype)


def largest_crop_number(crop_dir: Path) -> int:
    """The largest frame number among the crop images of ``crop_dir``; DataError if none."""
    numbers = [int(match.group(1)) for entry in crop_dir.iterdir()
               if entry.suffix.lower() in CROP_EXTENSIONS and (match := _CROP_NAME.match(entry.stem))]
    if not numbers or max(numbers) < 1:
        raise DataError(f"{crop_dir}: no crop images, so the frame count is unknown; "
                        f"put the video under {VIDEOS_DIR}/ or remove the name from the test list")
    return max(numbers)


def _test_person_from_crops(root: Path, name: str, backbone, batch_size: int, dtype: str) -> _Result:
    """A test person from its crops; n_frames from its video if there, else its crops."""
    person = test_person(name, 0)
    crop_dir = find_crop_dir(root, person)
    if crop_dir is None:
        raise _missing_crop_dir(root, person)
    video = video_file(root, person.video)
    if video is not None:
        n_frames, origin = count_video_frames(video), "video"
        log.info("%s: %d frames decoded from %s", name, n_frames, video)
    else:
        n_frames, origin = largest_crop_number(crop_dir), "crops"
        log.warning("%s: no video under %s, frame count %d taken from the last crop; faceless frames "
                    "after it cannot be known without the video", name, root / VIDEOS_DIR, n_frames)
    person = dataclasses.replace(person, n_frames=n_frames)
    features, present = embed_crops(backbone, list_crops(crop_dir, n_frames), n_frames, batch_size, dtype)
    return person, features, present, {"n_frames_source": origin}


# --------------------------------------------------------------------------- videos


def video_file(root: Path, video: str) -> Path | None:
    """``ROOT/videos/VIDEO.EXT`` for a known video extension, or None."""
    folder = root / VIDEOS_DIR
    for ext in VIDEO_EXTENSIONS:
        for candidate in (folder / f"{video}{ext}", folder / f"{video}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def find_video(root: Path, video: str) -> Path:
    """``ROOT/videos/VIDEO.EXT`` for a known video extension; DataError if none."""
    path = video_file(root, video)
    if path is None:
        raise DataError(f"{root / VIDEOS_DIR}: no video file for '{video}' ({', '.join(VIDEO_EXTENSIONS)}); "
                        "check the dataset root or use --source crops")
    return path


def count_video_frames(path: Path) -> int:
    """Number of frames :func:`affstream.io.decode.iter_frames` delivers for ``path``."""
    from ..io.decode import count_frames
    from ..records import DecodeStats

    stats = DecodeStats()
    count = count_frames(path, stats=stats)
    if stats.errors:
        log.warning("%s: %d decode error(s); its frame count %d may differ from the organizers'",
                    path, stats.errors, count)
    return count


def _box_centres_areas(frame_faces) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray([f.detection.box_xyxy for f in frame_faces.faces], dtype=np.float64).reshape(-1, 4)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return centres, areas


class PersonPicker:
    """Chooses, frame by frame, which detected face is each annotated person of a video.

    sides: the annotated people of one video as ``None`` (single person), ``"left"``
    or ``"right"``. See the module docstring for the rule.
    """

    def __init__(self, sides: Iterable[str | None]):
        self.sides = tuple(sides)
        self._last: dict[str, np.ndarray] = {}

    def pick(self, centres: np.ndarray, areas: np.ndarray) -> dict[str | None, int | None]:
        """centres: (n, 2) box centres in pixels; areas: (n,) box areas in pixels^2.

        Returns side -> index of the chosen face, or None (person missing this frame).
        """
        n = len(areas)
        choice: dict[str | None, int | None] = {side: None for side in self.sides}
        if n == 0:
            return choice
        if None in choice:
            choice[None] = int(np.argmax(areas))
        two_sided = {"left", "right"} & set(self.sides)
        if not two_sided:
            return choice
        if n >= 2:
            picks = {"left": int(np.argmin(centres[:, 0])), "right": int(np.argmax(centres[:, 0]))}
        else:
            picks = self._single_face(centres[0])
        for side, index in picks.items():
            if index is not None:
                self._last[side] = centres[index]
            if side in choice:
                choice[side] = index
        return choice

    def _single_face(self, centre: np.ndarray) -> dict[str, int | None]:
        distances = {side: float(np.linalg.norm(centre - self._last[side]))
                     for side in ("left", "right") if side in self._last}
        if not distances:
            return {"left": None, "right": None}
        nearest = min(distances, key=distances.get)
        return {side: (0 if side == nearest else None) for side in ("left", "right")}


def _people_from_video(video_path: Path, people: list[PersonLabels], face_features_fn,
                       pipeline, backbone, device: str, dtype: str
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Run the pipeline once over a video and gather each person's features.

    Returns ``({name: (features (n, D) dtype, present (n,) bool)}, number of decoded
    frames)`` where n is the person's n_frames, or the number of decoded frames for a
    ``Test_Set`` person. Frames beyond a person's annotation are ignored.
    """
    by_side = {side_of(p.name): p for p in people}
    picker = PersonPicker(by_side)
    picked: dict[str, dict[int, np.ndarray]] = {p.name: {} for p in people}
    n_decoded = 0
    stream = face_features_fn(video_path, pipeline=pipeline, backbone=backbone, device=device)
    for frame_faces, feats in stream:
        n_decoded += 1
        if not frame_faces.faces:
            continue
        row = frame_faces.index - 1
        centres, areas = _box_centres_areas(frame_faces)
        for side, index in picker.pick(centres, areas).items():
            if index is not None and row >= 0:
                picked[by_side[side].name][row] = np.asarray(feats[index], dtype=dtype)
    out = {}
    for person in people:
        n = n_decoded if person.split == TEST_SPLIT else person.n_frames
        features = np.zeros((n, backbone.feature_dim), dtype=dtype)
        present = np.zeros(n, dtype=bool)
        rows = [row for row in picked[person.name] if row < n]
        if rows:
            features[rows] = np.stack([picked[person.name][row] for row in rows])
            present[rows] = True
        out[person.name] = (features, present)
    return out, n_decoded


# --------------------------------------------------------------------------- driver


def _default_face_features_fn():
    from ..api import iter_face_features

    return iter_face_features


def _group_by_video(people: Iterable[PersonLabels]) -> dict[str, list[PersonLabels]]:
    groups: dict[str, list[PersonLabels]] = {}
    for person in people:
        groups.setdefault(person.video, []).append(person)
    return groups


def build_feature_bank(
    root: str | Path,
    out: str | Path,
    *,
    backbone: str = "ViT-L-14:openai",
    source: str = "crops",
    device: str = "auto",
    batch_size: int = 256,
    splits: Iterable[str] = SPLITS,
    tasks: Iterable[str] = ("expr", "au", "va"),
    progress: Progress | None = None,
    dtype: str = "float16",
    pipeline: Any = "default",
    face_features_fn: Callable[..., Iterator[tuple[Any, np.ndarray]]] | None = None,
    test_list: str | Path | None = None,
) -> dict[str, Any]:
    """Embed every annotated person under ``root`` (and the test people of
    ``test_list``) into the feature bank ``out``.

    Resumable: people already complete in ``out`` are skipped. ``progress(name, done,
    total)`` is called after each person (done counts skipped and failed people too).
    ``pipeline`` (preset name, path or PipelineConfig) and ``face_features_fn``
    (default ``affstream.api.iter_face_features``) are used by ``source="videos"``.
    ``test_list``: a text file of test people (see the module docstring), stored with
    split ``Test_Set`` and no labels; with it, ``root`` may hold no annotations at all.

    Returns a summary: ``{"people": total, "done": written now, "skipped": already in
    the bank, "failed": {name: message}, "frames": rows written, "missing": rows
    without a face}``. Raises DataError / ConfigError for a bad root, source, test list
    (a listed person who is annotated in ``splits``) or a bank built with another
    backbone; per-person problems go to ``failed``.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown feature source '{source}' (use crops or videos)")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown feature dtype '{dtype}' (use {' or '.join(DTYPES)})")
    root = Path(root)
    splits, tasks = tuple(splits), tuple(tasks)
    people = _scan(root, splits, tasks, allow_none=test_list is not None)
    tests = read_test_list(test_list, people) if test_list is not None else []
    if not people and not tests:
        raise DataError(f"{root}: no annotation files found in {', '.join(splits)}; check the dataset root")

    from ..embed.backbone import load_backbone

    bb = load_backbone(backbone, device, batch_size=batch_size, precision="auto")
    writer = BankWriter(out, backbone=str(bb.spec), backbone_sha256=bb.sha256,
                        feature_dim=bb.feature_dim, dtype=dtype, source=source)
    total = len(people) + len(tests)
    summary: dict[str, Any] = {"people": total, "done": 0, "skipped": 0, "failed": {},
                               "frames": 0, "missing": 0}
    counter = _Counter(total, progress)

    todo = [p for p in people.values() if not writer.has(p.name)]
    test_todo = [name for name in tests if not writer.has(name)]
    done_already = sorted(set(people) - {p.name for p in todo}) + [n for n in tests if n not in test_todo]
    summary["skipped"] = len(done_already)
    for name in done_already:
        counter.tick(name)
    if source == "crops":
        for person in todo:
            _store(summary, writer, person.name, counter, lambda p=person: (
                p, *_person_from_crops(root, p, bb, batch_size, dtype), {}))
        for name in test_todo:
            _store(summary, writer, name, counter,
                   lambda n=name: _test_person_from_crops(root, n, bb, batch_size, dtype))
    else:
        fn = face_features_fn or _default_face_features_fn()
        group_of = _group_by_video(todo + [test_person(name, 0) for name in test_todo])
        for video, group in group_of.items():
            _store_video(summary, writer, root, video, group, counter, fn, pipeline, bb, device, dtype)
    if summary["failed"]:
        log.error("%d of %d people failed: %s", len(summary["failed"]), total,
                  "; ".join(summary["failed"].values()))
    return summary


def _scan(root: Path, splits: tuple[str, ...], tasks: tuple[str, ...], allow_none: bool) -> dict[str, PersonLabels]:
    """Annotated people of ``root``; with ``allow_none`` a root without any challenge
    folder (a test-only root) gives none instead of a DataError."""
    if allow_none and root.is_dir() and not any((root / TASK_DIRS[t]).is_dir() for t in tasks):
        log.info("%s: no annotation folders; embedding the test list only", root)
        return {}
    return scan_affwild(root, splits=splits, tasks=tasks)


class _Counter:
    def __init__(self, total: int, progress: Progress | None):
        self.total, self.done, self.progress = total, 0, progress

    def tick(self, name: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(name, self.done, self.total)


def _record(summary: dict[str, Any], writer: BankWriter, result: _Result) -> None:
    person, features, present, extra = result
    writer.add(person, features, present, extra)
    summary["done"] += 1
    summary["frames"] += person.n_frames
    summary["missing"] += int(person.n_frames - present.sum())
    log.info("%s: %d frames, %d missing", person.name, person.n_frames, person.n_frames - present.sum())


def _store(summary, writer, name: str, counter, compute: Callable[[], _Result]) -> None:
    try:
        _record(summary, writer, compute())
    except AffstreamError as exc:
        log.error("%s: %s", name, exc)
        summary["failed"][name] = str(exc)
    counter.tick(name)


def _store_video(summary, writer, root, video, group, counter, fn, pipeline, bb, device, dtype) -> None:
    try:
        path = find_video(root, video)
        results, n_decoded = _people_from_video(path, group, fn, pipeline, bb, device, dtype)
    except AffstreamError as exc:
        log.error("%s: %s", video, exc)
        for person in group:
            summary["failed"][person.name] = str(exc)
            counter.tick(person.name)
        return
    for person in group:
        _store(summary, writer, person.name, counter,
               lambda p=person: _checked(p, n_decoded, path, results[p.name]))


def _checked(person: PersonLabels, n_decoded: int, path: Path, result) -> _Result:
    if person.split == TEST_SPLIT:
        return test_person(person.name, n_decoded), *result, {"n_frames_source": "video"}
    check_length(person, n_decoded, str(path))
    return person, *result, {}
