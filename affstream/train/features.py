"""Computing a feature bank from an Aff-Wild2-format dataset (``affstream features``).

Two sources of face images:

``crops`` (default): the organizers' aligned crops, ``ROOT/cropped_aligned/DIR/%05d.jpg``
    with 1-based frame numbers and gaps where no face was found. ``DIR`` is the person's
    name (``video3_left``); a single-person name without its folder falls back to its
    video's name (the same name), but a ``_left`` / ``_right`` person never does: the
    video's folder cannot say which of the two it shows, so the person fails. Crops
    numbered beyond the annotated frames are ignored up to ``LENGTH_TOLERANCE_FRAMES``
    frames; further beyond, the person fails (crops and annotation do not match).
    Each crop is resized to the backbone's input size (bicubic, antialiased) and
    normalised with the backbone's mean/std. Crops are untrusted: a crop's header is
    read first (:func:`crop_size`: JPEG or PNG, at most ``MAX_CROP_SIDE`` pixels a
    side, so a decompression bomb is never decoded), and a crop that fails that check
    or does not decode (truncated, corrupt) is a *missing frame*, like a frame the
    organizers found no face in: logged with its file name and counted per person in
    the summary (``"unreadable"``). One bad file among a person's thousands of crops
    thus costs one frame, not the person (who would then be absent from training and
    from a submission); a person none of whose crops can be used fails.

``videos``: ``ROOT/videos/VIDEO.EXT`` run through affstream's own pipeline
    (decode -> detect -> track -> align -> embed), decoded once per video. The
    annotated person is a set of whole *tracks* (never a per-frame choice, so a face
    that shows up for a few frames cannot take the label):

    - *dominance* of a track: its frame count x its mean box area;
    - one-person video (``VIDEO.txt``): a chain (below) is grown from each of the
      ``CHAIN_SEEDS`` most dominant tracks; the chain with the largest total dominance
      is the person (so a person whose track broke into pieces still beats a
      long-lived small background face);
    - two-person video (``VIDEO_left.txt`` / ``VIDEO_right.txt``): the pair of tracks
      with the largest sum, over the frames they share, of the smaller of their two
      box areas; of the two, the one with the smaller mean box-centre x over those
      frames is left. Both are grown into chains (a track fitting both joins the one it
      continues more closely). Without two faces in any one frame, both people are
      missing in every frame (logged).
    - growing a chain: a track not yet chosen joins when it overlaps none of the
      chain's tracks in time (frame spans disjoint) and its first box continues the
      last box of the chained track just before it, or its last box leads into the
      first box of the chained track just after it: centres at most
      ``CHAIN_DISTANCE_MAX`` box sizes apart and sizes within ``CHAIN_SCALE_RATIO_MAX``
      (how a tracker that lost a face picks it up again under a new id); repeated,
      most dominant first, until no track joins. Frames no chosen track covers are
      missing: a passer-by whose track overlaps the person's in time, or who appears
      away from where the person was, is never taken.

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
(missing crop folder, unreadable video, length mismatch) is logged and reported in the summary; the run
goes on with the others. A bank that cannot be written (checked before the backbone is
loaded, see :func:`affstream.train.bank.check_bank_output`; or a later write failing,
e.g. a full disk) stops the run with an OutputError: the people already written stay
in the bank, and the same command resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AffstreamError, ConfigError, DataError, OutputError, first_line
from .affwild import (
    LENGTH_TOLERANCE_FRAMES,
    SPLITS,
    TASK_DIRS,
    TEST_SPLIT,
    PersonLabels,
    check_length,
    read_test_list,
    scan_affwild,
    side_of,
    test_person,
)
from .bank import DTYPES, SOURCES, BankWriter, check_bank_output
from .person_tracks import TrackBoxes, choose_tracks

log = logging.getLogger("affstream")

CROPS_DIR = "cropped_aligned"
VIDEOS_DIR = "videos"
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
CROP_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
_CROP_NAME = re.compile(r"^(\d+)$")
MAX_CROP_SIDE = 4096
"""Largest width or height a crop's header may declare (face crops are a few hundred)."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_MAX_SEGMENTS = 1024  # segments before the frame header: a handful in real files
_LOAD_THREADS = 4

Progress = Callable[[str, int, int], None]
_Result = tuple[PersonLabels, np.ndarray, np.ndarray, dict[str, Any], int]
"""A person ready for the bank: labels, features, present flags, extra index fields,
number of unreadable crops (kept as missing frames)."""


# --------------------------------------------------------------------------- crops


def numbered_crops(crop_dir: Path) -> dict[int, Path]:
    """``{frame number: path}`` of every crop image of ``crop_dir`` whose stem is a
    number (``00012.jpg`` -> 12), sorted by frame; other files are ignored."""
    crops = {int(match.group(1)): entry for entry in crop_dir.iterdir()
             if entry.suffix.lower() in CROP_EXTENSIONS and (match := _CROP_NAME.match(entry.stem))}
    return dict(sorted(crops.items()))


def list_crops(crop_dir: Path, n_frames: int) -> dict[int, Path]:
    """``{frame: path}`` of the crops in ``crop_dir`` for frames 1..n_frames.

    Files whose stem is not a frame number, frame 0 and frames beyond ``n_frames``
    are ignored (logged).
    """
    crops = numbered_crops(crop_dir)
    kept = {frame: path for frame, path in crops.items() if 1 <= frame <= n_frames}
    if len(kept) < len(crops):
        log.warning("%s: %d crops outside frames 1..%d ignored", crop_dir, len(crops) - len(kept), n_frames)
    return kept


def find_crop_dir(root: Path, labels: PersonLabels) -> Path | None:
    """The crop folder of a person, or None if there is none.

    ``cropped_aligned/NAME`` if it exists. Otherwise, for a single-person name only,
    ``cropped_aligned/VIDEO``. A ``_left`` / ``_right`` person never falls back to the
    video's folder (it cannot say which of the two people it shows): without its own
    folder it raises DataError naming the missing folder.
    """
    own = root / CROPS_DIR / labels.name
    if own.is_dir():
        return own
    if side_of(labels.name) is not None:
        raise DataError(f"{own}: no crop folder for '{labels.name}', one of two people of video "
                        f"'{labels.video}' (its folder '{labels.video}' is not used: it cannot tell the two "
                        "apart); add the person's crops or use --source videos")
    video = root / CROPS_DIR / labels.video
    return video if video.is_dir() else None


def check_crop_range(crop_dir: Path, crops: dict[int, Path], labels: PersonLabels) -> None:
    """DataError if the largest crop number of ``crops`` exceeds the person's annotated
    frames by more than ``LENGTH_TOLERANCE_FRAMES`` (crops and annotation then belong
    to different videos or frame rates); within the tolerance the extra crops are
    ignored by :func:`list_crops`."""
    largest = max(crops, default=0)
    excess = largest - labels.n_frames
    if excess <= LENGTH_TOLERANCE_FRAMES:
        return
    annotation = ", ".join(sorted(set(labels.files.values()))) or f"the annotation of '{labels.name}'"
    raise DataError(
        f"{crop_dir}: largest crop number {largest} but {annotation} has {labels.n_frames} frame lines "
        f"({excess} more, tolerance {LENGTH_TOLERANCE_FRAMES}); check that the crops and the annotation "
        "belong to the same video"
    )


def crop_size(path: Path) -> tuple[int, int]:
    """(width, height) a JPEG or PNG crop declares in its header, read without decoding.

    DataError (naming the file) if the file is neither a JPEG nor a PNG, its header is
    truncated or corrupt, or it declares more than ``MAX_CROP_SIDE`` pixels a side (a
    face crop is a few hundred; a header declaring 30000x30000 is a decompression bomb,
    which would take gigabytes to decode).
    """
    try:
        with open(path, "rb") as handle:
            size = _png_size(handle) if handle.read(8) == _PNG_SIGNATURE else _jpeg_size(handle)
    except OSError as exc:
        raise DataError(f"{path}: unreadable crop ({exc.strerror or exc}); check its permissions") from None
    if isinstance(size, str):
        raise DataError(f"{path}: unreadable crop ({size}); replace or delete it")
    width, height = size
    if not (1 <= width <= MAX_CROP_SIDE and 1 <= height <= MAX_CROP_SIDE):
        raise DataError(f"{path}: unreadable crop (its header declares {width}x{height} pixels, a face crop has "
                        f"at most {MAX_CROP_SIDE}x{MAX_CROP_SIDE}); replace or delete it")
    return width, height


def _png_size(handle) -> tuple[int, int] | str:
    """Size from the IHDR chunk that must follow the PNG signature (already read)."""
    chunk = handle.read(16)
    if len(chunk) < 16 or chunk[4:8] != b"IHDR":
        return "truncated or corrupt PNG header"
    return int.from_bytes(chunk[8:12], "big"), int.from_bytes(chunk[12:16], "big")


def _jpeg_size(handle) -> tuple[int, int] | str:
    """Size from the first SOF segment of a JPEG (segments before it are skipped)."""
    handle.seek(0)
    if handle.read(2) != b"\xff\xd8":
        return "not a JPEG or PNG image"
    for _ in range(_JPEG_MAX_SEGMENTS):
        byte = handle.read(1)
        if byte != b"\xff":
            return "corrupt JPEG header" if byte else "truncated JPEG header"
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes
            marker = handle.read(1)
        if not marker:
            return "truncated JPEG header"
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a segment
            continue
        if code in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return "corrupt JPEG header (no frame header before the image data)"
        length = handle.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            return "truncated or corrupt JPEG header"
        if code in _JPEG_SOF:
            frame = handle.read(5)
            if len(frame) < 5:
                return "truncated JPEG header"
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        handle.seek(int.from_bytes(length, "big") - 2, 1)
    return "corrupt JPEG header (no frame header)"


def _load_crop(path: Path, size: int, warn: bool = True) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` with image (size, size, 3) uint8 RGB, or ``(None, problem)`` if
    the crop cannot be used (see :func:`crop_size`; also a truncated or undecodable
    image body). The header is checked before anything is decoded."""
    from PIL import Image

    try:
        crop_size(path)
        with Image.open(path, formats=("JPEG", "PNG")) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
            return np.asarray(image, dtype=np.uint8), None
    except DataError as exc:
        problem = str(exc)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        # Pillow's errors for a body that does not decode (truncated, corrupt)
        problem = f"{path}: unreadable crop (cannot decode it: {first_line(exc, 200)}); replace or delete it"
    if warn:
        log.warning("%s (frame kept as missing)", problem)
    return None, problem


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
                dtype: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (n_frames, D) in ``dtype``, present (n_frames,) bool for ``crops``, and
    the problems of the crops that could not be used (one message per file).

    Row k-1 is frame k; frames without a usable crop stay zero and not present: an
    unreadable crop is a missing frame (logged, and counted in the summary of
    :func:`build_feature_bank`). DataError if there are crops but none is usable.
    The next batch of images is decoded on threads while the current one is embedded.
    """
    features = np.zeros((n_frames, backbone.feature_dim), dtype=dtype)
    present = np.zeros(n_frames, dtype=bool)
    problems: list[str] = []
    items = list(crops.items())
    chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    size = int(backbone.image_size)
    with ThreadPoolExecutor(max_workers=_LOAD_THREADS) as pool:
        def submit(chunk):
            return [pool.submit(_load_crop, path, size) for _, path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            loaded = [future.result() for future in pending]
            pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            problems.extend(problem for _, problem in loaded if problem is not None)
            frames = [frame for (frame, _), (image, _) in zip(chunk, loaded, strict=True) if image is not None]
            images = [image for image, _ in loaded if image is not None]
            if not images:
                continue
            rows = np.asarray(frames, dtype=np.int64) - 1
            features[rows] = _embed_uint8(backbone, np.stack(images))
            present[rows] = True
    if items and len(problems) == len(items):
        raise DataError(f"none of the {len(items)} crop(s) of {items[0][1].parent} can be used "
                        f"(first: {problems[0]})")
    return features, present, problems


def _missing_crop_dir(root: Path, labels: PersonLabels) -> DataError:
    names = dict.fromkeys((labels.name, labels.video))
    return DataError(f"{root / CROPS_DIR}: no crop folder {' or '.join(repr(n) for n in names)}; "
                     "check the dataset root or use --source videos")


def _person_from_crops(root: Path, labels: PersonLabels, backbone, batch_size: int, dtype: str) -> _Result:
    crop_dir = find_crop_dir(root, labels)
    if crop_dir is None:
        raise _missing_crop_dir(root, labels)
    check_crop_range(crop_dir, numbered_crops(crop_dir), labels)
    crops = list_crops(crop_dir, labels.n_frames)
    features, present, problems = embed_crops(backbone, crops, labels.n_frames, batch_size, dtype)
    return labels, features, present, {}, len(problems)


def largest_crop_number(crop_dir: Path) -> int:
    """The largest frame number among the crop images of ``crop_dir``; DataError if none."""
    largest = max(numbered_crops(crop_dir), default=0)
    if largest < 1:
        raise DataError(f"{crop_dir}: no crop images, so the frame count is unknown; "
                        f"put the video under {VIDEOS_DIR}/ or remove the name from the test list")
    return largest


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
    features, present, problems = embed_crops(backbone, list_crops(crop_dir, n_frames), n_frames, batch_size, dtype)
    return person, features, present, {"n_frames_source": origin}, len(problems)


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
    """Number of frames :func:`affstream.io.sources.iter_frames` delivers for ``path``."""
    from ..io.sources import count_frames
    from ..records import DecodeStats

    stats = DecodeStats()
    count = count_frames(path, stats=stats)
    if stats.errors:
        log.warning("%s: %d decode error(s); its frame count %d may differ from the organizers'",
                    path, stats.errors, count)
    return count


def collect_tracks(stream: Iterable[tuple[Any, Any]],
                   keep: Callable[[int, int, Any], None]) -> tuple[dict[int, TrackBoxes], int]:
    """Every track of a decoded video: its boxes, and the number of decoded frames.

    stream: per decoded frame, its FrameFaces and one item per face (a feature row, a
    crop). ``keep(track, row, item)`` is called, in stream order, for each face a track
    keeps (row: 0-based frame row); a face before frame 1, or a second face of one
    track in a frame, is dropped.
    """
    rows: dict[int, list[int]] = {}
    boxes: dict[int, list[np.ndarray]] = {}
    n_decoded = 0
    for frame_faces, items in stream:
        n_decoded += 1
        row = frame_faces.frame_index - 1
        for face, item in zip(frame_faces.faces, items, strict=True):
            track = int(face.track_id)
            if row < 0 or (rows.get(track) and rows[track][-1] >= row):
                continue
            rows.setdefault(track, []).append(row)
            boxes.setdefault(track, []).append(np.asarray(face.detection.box_xyxy, dtype=np.float64))
            keep(track, row, item)
    return {t: TrackBoxes(rows[t], np.stack(boxes[t])) for t in rows}, n_decoded


def _collect_tracks(stream, dtype: str) -> tuple[dict[int, TrackBoxes], dict[int, np.ndarray], int]:
    """Every track of a decoded video: its boxes, its (m, D) features in ``dtype``,
    and the number of decoded frames. A second face of one track in a frame is dropped."""
    feats: dict[int, list[np.ndarray]] = {}

    def keep(track: int, _row: int, feat: Any) -> None:
        feats.setdefault(track, []).append(np.asarray(feat, dtype=dtype))

    tracks, n_decoded = collect_tracks(stream, keep)
    return tracks, {t: np.stack(feats[t]) for t in tracks}, n_decoded


def choose_people_tracks(video_path: Path, tracks: dict[int, TrackBoxes],
                         people: Iterable[PersonLabels]) -> dict[str, list[int]]:
    """``{name: track ids}`` of each annotated person of one video (the rule of the
    module docstring, :func:`~affstream.train.person_tracks.choose_tracks`); an empty
    list: the person is missing in every frame. Logs when the left and right people
    of a two-person video cannot be told apart."""
    people = list(people)
    chosen = choose_tracks(tracks, [side_of(p.name) for p in people])
    if any(side_of(p.name) for p in people) and not any(chosen.get(s) for s in ("left", "right")):
        log.warning("%s: never two faces at once, so its left and right people cannot be told apart; "
                    "their frames are all missing", video_path)
    return {p.name: chosen[side_of(p.name)] for p in people}


def _people_from_video(video_path: Path, people: list[PersonLabels], face_features_fn,
                       pipeline, backbone, device: str, dtype: str
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Run the pipeline once over a video and gather each person's features.

    Returns ``({name: (features (n, D) dtype, present (n,) bool)}, number of decoded
    frames)`` where n is the person's n_frames, or the number of decoded frames for a
    ``Test_Set`` person. Frames beyond a person's annotation are ignored.
    """
    stream = face_features_fn(video_path, pipeline=pipeline, backbone=backbone, device=device)
    tracks, feats, n_decoded = _collect_tracks(stream, dtype)
    chosen = choose_people_tracks(video_path, tracks, people)
    out = {}
    for person in people:
        n = n_decoded if person.split == TEST_SPLIT else person.n_frames
        features = np.zeros((n, backbone.feature_dim), dtype=dtype)
        present = np.zeros(n, dtype=bool)
        ids = chosen[person.name]
        for track in ids:
            keep = tracks[track].rows < n
            features[tracks[track].rows[keep]] = feats[track][keep]
            present[tracks[track].rows[keep]] = True
        log.info("%s: track(s) %s chosen, face in %d of %d frames", person.name, sorted(ids), present.sum(), n)
        out[person.name] = (features, present)
    return out, n_decoded


# --------------------------------------------------------------------------- driver


def _default_face_features_fn():
    """(video, pipeline=, backbone=, device=) -> per-frame (FrameFaces, features), through
    affstream's own detect/track/align/embed steps (no head)."""
    from ..config import PipelineConfig, load_pipeline
    from ..pipeline import load_stages
    from ..pipeline.offline import iter_face_features

    def face_features(video, *, pipeline="default", backbone=None, device=None):
        config = pipeline if isinstance(pipeline, PipelineConfig) else load_pipeline(pipeline)
        spec = str(backbone.spec) if backbone is not None and not isinstance(backbone, str) else backbone
        config = config.with_overrides(device=device, embed={"backbone": spec})
        loaded = None if isinstance(backbone, str) else backbone
        yield from iter_face_features(video, load_stages(config, backbone=loaded, with_head=False))

    return face_features


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
    without a face, "unreadable": {name: crops that could not be used (counted in
    "missing")}}``. Raises DataError / ConfigError for a bad root, source, test list
    (a listed person who is annotated in ``splits``) or a bank built with another
    backbone, OutputError for a bank that cannot be written (before the backbone is
    loaded, or when a write fails: the run stops, people written so far are kept);
    per-person problems go to ``failed``.
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

    check_bank_output(out)
    from ..embed.backbone import load_backbone

    bb = load_backbone(backbone, device, batch_size=batch_size, precision="auto")
    writer = BankWriter(out, backbone=str(bb.spec), backbone_sha256=bb.sha256,
                        feature_dim=bb.feature_dim, dtype=dtype, source=source)
    total = len(people) + len(tests)
    summary: dict[str, Any] = {"people": total, "done": 0, "skipped": 0, "failed": {},
                               "frames": 0, "missing": 0, "unreadable": {}}
    counter = _Counter(total, progress)

    todo = [p for p in people.values() if not writer.has(p.name)]
    test_todo = [name for name in tests if not writer.has(name)]
    done_already = sorted(set(people) - {p.name for p in todo}) + [n for n in tests if n not in test_todo]
    summary["skipped"] = len(done_already)
    for name in done_already:
        counter.tick(name)
    if source == "crops":
        for person in todo:
            _store(summary, writer, person.name, counter,
                   lambda p=person: _person_from_crops(root, p, bb, batch_size, dtype))
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
    person, features, present, extra, unreadable = result
    writer.add(person, features, present, extra)
    summary["done"] += 1
    if unreadable:
        summary["unreadable"][person.name] = unreadable
    summary["frames"] += person.n_frames
    summary["missing"] += int(person.n_frames - present.sum())
    log.info("%s: %d frames, %d missing", person.name, person.n_frames, person.n_frames - present.sum())


def _store(summary, writer, name: str, counter, compute: Callable[[], _Result]) -> None:
    try:
        _record(summary, writer, compute())
    except OutputError:
        raise  # the bank cannot be written: every later person would fail the same way
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
        return test_person(person.name, n_decoded), *result, {"n_frames_source": "video"}, 0
    check_length(person, n_decoded, str(path))
    return person, *result, {}, 0
