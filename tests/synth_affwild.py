"""Synthetic Aff-Wild2-format data for tests (no real Aff-Wild2 can be downloaded here).

Two generators:

- :func:`make_feature_bank` writes a feature bank directly (no images): a latent,
  temporally smooth affective state per person (expression segments with an
  imbalanced class prior, AUs implied by the expression, valence/arousal on the
  circumplex) rendered into features as class prototype + AU and VA directions +
  per-person offset + per-frame noise. Heads trained on it should learn the rules;
  with a large ``noise`` a per-frame model is weak and temporal models win.
- :func:`make_affwild_root` writes a small raw dataset in the organizers' layout
  (annotation files, ``cropped_aligned`` crops cut from the real clips in tests/data,
  optionally ``videos/``), plus :func:`corrupt_annotation` for malformed variants.

Both are deterministic for a given seed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.train.affwild import HEADERS, TASK_DIRS, PersonLabels, unannotated
from affstream.train.bank import BankWriter

DATA = Path(__file__).resolve().parent / "data"

CLASS_PRIOR: dict[str, float] = {
    "Neutral": 0.40, "Anger": 0.08, "Disgust": 0.04, "Fear": 0.02,
    "Happiness": 0.20, "Sadness": 0.10, "Surprise": 0.06, "Other": 0.10,
}
"""Imbalanced expression prior of the synthetic bank (like Aff-Wild2: Neutral dominates)."""

AU_RULES: dict[str, tuple[str, ...]] = {
    "Neutral": (),
    "Anger": ("AU4", "AU7", "AU23", "AU24"),
    "Disgust": ("AU4", "AU10", "AU15"),
    "Fear": ("AU1", "AU2", "AU4", "AU7", "AU26"),
    "Happiness": ("AU6", "AU12", "AU25"),
    "Sadness": ("AU1", "AU4", "AU15"),
    "Surprise": ("AU1", "AU2", "AU25", "AU26"),
    "Other": ("AU25",),
}
"""AUs active with probability ``AU_RULE_P`` during each expression; others ``AU_BASE_P``."""
AU_RULE_P = 0.85
AU_BASE_P = 0.05

VA_CENTRES: dict[str, tuple[float, float]] = {
    "Neutral": (0.0, 0.0), "Anger": (-0.6, 0.7), "Disgust": (-0.6, 0.3), "Fear": (-0.5, 0.7),
    "Happiness": (0.7, 0.5), "Sadness": (-0.6, -0.4), "Surprise": (0.3, 0.8), "Other": (0.0, 0.2),
}
"""(valence, arousal) each expression pulls towards (circumplex)."""

TRUTH_FILE = "synth_truth.json"
MANIFEST_FILE = "synth_manifest.json"


# --------------------------------------------------------------------------- latent state


def _expr_sequence(rng: np.random.Generator, n: int, prior: np.ndarray, smooth: bool) -> np.ndarray:
    """(n,) int64 classes: segments of 15-120 frames (smooth) or i.i.d. frames."""
    if not smooth:
        return rng.choice(len(prior), size=n, p=prior).astype(np.int64)
    out = np.empty(n, dtype=np.int64)
    start = 0
    while start < n:
        length = int(rng.integers(15, 121))
        out[start:start + length] = rng.choice(len(prior), p=prior)
        start += length
    return out


def _au_sequence(rng: np.random.Generator, expr: np.ndarray, smooth: bool) -> np.ndarray:
    """(n, 12) int8: AUs drawn once per expression segment, then 2% frame flips."""
    rule = np.array([[au in AU_RULES[c] for au in AU_LABELS] for c in EXPR_LABELS])
    p_on = np.where(rule, AU_RULE_P, AU_BASE_P)
    n = len(expr)
    au = np.empty((n, len(AU_LABELS)), dtype=np.int8)
    bounds = np.flatnonzero(np.diff(expr)) + 1 if smooth else np.arange(1, n)
    for seg in np.split(np.arange(n), bounds):
        au[seg] = rng.random(len(AU_LABELS)) < p_on[expr[seg[0]]]
    flips = rng.random(au.shape) < (0.02 if smooth else 0.0)
    return np.where(flips, 1 - au, au).astype(np.int8)


def _low_pass(x: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(x)
    acc = x[0]
    for i, value in enumerate(x):
        acc = acc + alpha * (value - acc)
        out[i] = acc
    return out


def _va_sequence(rng: np.random.Generator, expr: np.ndarray, smooth: bool) -> np.ndarray:
    """(n, 2) float32 in [-1, 1]: circumplex target, eased in, plus slow drift."""
    centres = np.array([VA_CENTRES[c] for c in EXPR_LABELS], dtype=np.float64)
    target = centres[expr]
    drift = _low_pass(rng.normal(0.0, 1.0, size=(len(expr), 2)), 0.02)
    drift *= 0.15 / max(float(np.abs(drift).max()), 1e-6)
    va = (_low_pass(target, 0.1) if smooth else target) + drift
    return np.clip(va, -1.0, 1.0).astype(np.float32)


def _runs_mask(rng: np.random.Generator, n: int, frac: float, max_run: int) -> np.ndarray:
    """(n,) bool covering about ``frac`` of the frames in runs of 1..max_run frames."""
    mask = np.zeros(n, dtype=bool)
    while frac > 0 and mask.mean() < frac:
        start = int(rng.integers(n))
        mask[start:start + int(rng.integers(1, max_run + 1))] = True
    return mask


def _unit_rows(rng: np.random.Generator, k: int, dim: int) -> np.ndarray:
    rows = rng.normal(size=(k, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --------------------------------------------------------------------------- bank


def _split_of_video(j: int, n_videos: int) -> str:
    if n_videos >= 2 and (j % 3 == 2 or (n_videos < 3 and j == n_videos - 1)):
        return "Validation_Set"
    return "Train_Set"


def _people_names(prefix: str, n_people: int, width: int, pair_from: int) -> list[tuple[str, str]]:
    """(name, video) pairs; with ``pair_from``+ people the last two share a video
    (``_left`` / ``_right``)."""
    pairs = [(f"{prefix}{i + 1:0{width}d}",) * 2 for i in range(n_people)]
    if n_people >= pair_from:
        video = f"{prefix}{n_people - 1:0{width}d}"
        pairs[-2:] = [(f"{video}_left", video), (f"{video}_right", video)]
    return pairs


def make_feature_bank(
    path: str | Path,
    *,
    n_people: int = 12,
    frames: tuple[int, int] | int = (300, 900),
    dim: int = 32,
    noise: float = 1.5,
    seed: int = 0,
    imbalance: bool = True,
    smooth: bool = True,
    unannotated_frac: float = 0.05,
    missing_frac: float = 0.03,
    tasks: tuple[str, ...] = ("expr", "au", "va"),
    identity: float = 0.3,
    dtype: str = "float16",
) -> Path:
    """Write a synthetic feature bank at ``path`` and return ``path``.

    frames: per-person length, uniform in [lo, hi] (or an exact int).
    noise:  norm of the per-frame Gaussian noise relative to the unit class prototype
            (1.5 default; ~4 makes single frames unreliable so temporal models win).
    identity: norm of a per-person constant offset (a "face identity").
    Features are L2-normalised like CLIP's; missing frames are zero with present False.
    Ground truth (prototypes, rules, prior) is written to ``path/synth_truth.json``.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    lo, hi = (frames, frames) if isinstance(frames, int) else frames
    prior = np.array([CLASS_PRIOR[c] for c in EXPR_LABELS]) if imbalance else np.full(8, 1 / 8)
    protos = _unit_rows(rng, len(EXPR_LABELS), dim)
    au_dirs = _unit_rows(rng, len(AU_LABELS), dim) * 0.5
    va_dirs = _unit_rows(rng, 2, dim) * 0.8
    writer = BankWriter(path, backbone=f"synthetic:seed{seed}", backbone_sha256=None,
                        feature_dim=dim, dtype=dtype, source="crops")
    names = _people_names("synth", n_people, 3, pair_from=4)
    videos = sorted({v for _, v in names})
    for name, video in names:
        n = int(rng.integers(lo, hi + 1))
        expr = _expr_sequence(rng, n, prior, smooth)
        au = _au_sequence(rng, expr, smooth)
        va = _va_sequence(rng, expr, smooth)
        feats = protos[expr] + au.astype(np.float64) @ au_dirs + va.astype(np.float64) @ va_dirs
        feats += _unit_rows(rng, 1, dim) * identity
        feats += rng.normal(0.0, noise / np.sqrt(dim), size=feats.shape)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        labels = {"expr": expr, "au": au, "va": va}
        for task in ("expr", "au", "va"):
            hole = _runs_mask(rng, n, unannotated_frac, 30)
            labels[task][hole] = unannotated(task, 1)[0]
        present = ~_runs_mask(rng, n, missing_frac, 8)
        person = PersonLabels(name=name, video=video, split=_split_of_video(videos.index(video), len(videos)),
                              n_frames=n, **{t: (labels[t] if t in tasks else None) for t in TASK_DIRS})
        writer.add(person, feats.astype(np.float32), present)
    truth = {"seed": seed, "dim": dim, "noise": noise, "identity": identity,
             "class_prior": dict(zip(EXPR_LABELS, prior.tolist(), strict=True)), "au_rules": AU_RULES,
             "au_rule_p": AU_RULE_P, "au_base_p": AU_BASE_P, "va_centres": VA_CENTRES,
             "prototypes": protos.tolist(), "au_directions": au_dirs.tolist(),
             "va_directions": va_dirs.tolist()}
    (path / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return path


def read_truth(path: str | Path) -> dict:
    """The ground truth written by :func:`make_feature_bank` (arrays as numpy)."""
    truth = json.loads((Path(path) / TRUTH_FILE).read_text())
    for key in ("prototypes", "au_directions", "va_directions"):
        truth[key] = np.asarray(truth[key])
    return truth


# --------------------------------------------------------------------------- raw dataset

# Square boxes (x1, y1, x2, y2) around the face in the first frames of each clip.
CLIPS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "single_face": ("single_face.mp4", (200, 85, 400, 285)),
    "wolfgang": ("WolfgangLanger_Pexels.mp4", (295, 60, 595, 360)),
}


@functools.lru_cache(maxsize=4)
def clip_frames(clip: str, n: int) -> tuple[np.ndarray, ...]:
    """The first ``n`` decoded frames of a tests/data clip, (H, W, 3) uint8 RGB each."""
    import av

    frames = []
    with av.open(str(DATA / CLIPS[clip][0])) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return tuple(frames)


def _frame_at(clip: str, k: int, n: int) -> np.ndarray:
    """Frame k (1-based) of a sequence of n frames drawn from ``clip`` (looping back)."""
    frames = clip_frames(clip, min(n, 72))
    return frames[(k - 1) % len(frames)]


def tint(image: np.ndarray, expr: int, valence: float) -> np.ndarray:
    """Label-tied colour change: brightness 0.6 + 0.1 * class (unchanged for -1),
    red up / blue down by 40 * valence (NaN -> 0)."""
    out = image.astype(np.float32)
    if expr >= 0:
        out *= 0.6 + 0.1 * expr
    if np.isfinite(valence):
        out[..., 0] += 40.0 * valence
        out[..., 2] -= 40.0 * valence
    return np.clip(out, 0, 255).astype(np.uint8)


def _face_crop(clip: str, frame: np.ndarray, size: int = 112) -> np.ndarray:
    from PIL import Image

    x1, y1, x2, y2 = CLIPS[clip][1]
    crop = Image.fromarray(frame[y1:y2, x1:x2]).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(crop)


def _raw_labels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    expr = np.repeat(rng.integers(0, 8, size=n // 6 + 1), 6)[:n].astype(np.int64)
    au = _au_sequence(rng, expr, smooth=True)
    va = np.round(_va_sequence(rng, expr, smooth=True), 3)
    for k in rng.choice(n, size=max(1, n // 20), replace=False):
        expr[k] = -1
    for k in rng.choice(n, size=max(1, n // 20), replace=False):
        au[k] = -1
    for k in rng.choice(n, size=max(1, n // 20), replace=False):
        va[k] = np.nan
    return {"expr": expr, "au": au, "va": va}


def annotation_text(task: str, values: np.ndarray) -> str:
    """The Aff-Wild2 file text for ``values`` in :mod:`affwild`'s encoding."""
    lines = [",".join(HEADERS[task])]
    if task == "expr":
        lines += [str(int(v)) for v in values]
    elif task == "au":
        lines += [",".join(str(int(x)) for x in row) for row in values]
    else:
        lines += ["-5,-5" if np.isnan(row).any() else f"{row[0]:.3f},{row[1]:.3f}" for row in values]
    return "\n".join(lines) + "\n"


def make_affwild_root(
    path: str | Path,
    *,
    n_people: int = 4,
    frames: int = 40,
    seed: int = 0,
    with_crops: bool = True,
    with_videos: bool = False,
    n_deleted: int = 3,
) -> Path:
    """Write a small Aff-Wild2-format dataset at ``path`` and return ``path``.

    People: ``vid01``, ``vid02``, ... ; with 3+ people the last two are ``vidNN_left``
    and ``vidNN_right`` of one video. Every person has ``frames`` annotated frames in
    all three tasks, a few unannotated (-1 / -5). Crops (112x112 JPEG) come from the
    real clips in tests/data, tinted by :func:`tint` from the labels; ``n_deleted``
    crops per person are deleted. Videos (with_videos) hold the source frames at
    320x180, side by side (640x180) for the two-person video.
    ``path/synth_manifest.json`` records each person's video, split, clip, labels
    and deleted frames.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    names = _people_names("vid", n_people, 2, pair_from=3)
    videos = sorted({v for _, v in names})
    manifest = {}
    for i, (name, video) in enumerate(names):
        split = "Validation_Set" if videos.index(video) % 2 == 1 else "Train_Set"
        two_person = name != video
        clip = "wolfgang" if (name.endswith("_right") if two_person else i % 2 == 1) else "single_face"
        labels = _raw_labels(rng, frames)
        for task, folder in TASK_DIRS.items():
            target = path / folder / split / f"{name}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(annotation_text(task, labels[task]))
        deleted = sorted(int(k) for k in rng.choice(np.arange(1, frames + 1), size=n_deleted, replace=False))
        if with_crops:
            _write_crops(path / "cropped_aligned" / name, clip, labels, deleted)
        manifest[name] = {"video": video, "split": split, "clip": clip, "n_frames": frames,
                          "deleted": deleted,
                          "labels": {t: np.where(np.isnan(v), -5, v).tolist() if t == "va" else v.tolist()
                                     for t, v in labels.items()}}
    if with_videos:
        for video in videos:
            clips = [manifest[n]["clip"] for n, v in names if v == video]
            _write_video(path / "videos" / f"{video}.mp4", clips, frames)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return path


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST_FILE).read_text())


def _write_crops(folder: Path, clip: str, labels: dict[str, np.ndarray], deleted: list[int]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels["expr"])
    for k in range(1, n + 1):
        if k in deleted:
            continue
        crop = _face_crop(clip, _frame_at(clip, k, n))
        image = tint(crop, int(labels["expr"][k - 1]), float(labels["va"][k - 1, 0]))
        Image.fromarray(image).save(folder / f"{k:05d}.jpg", quality=92)


def _write_video(target: Path, clips: list[str], n: int, fps: int = 25) -> None:
    import av
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    width = 320 * len(clips)
    with av.open(str(target), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, 180, "yuv420p"
        for k in range(1, n + 1):
            parts = [np.asarray(Image.fromarray(_frame_at(c, k, n)).resize((320, 180))) for c in clips]
            frame = av.VideoFrame.from_ndarray(np.concatenate(parts, axis=1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_test_crops(root: str | Path, name: str, frames, *, clip: str = "single_face") -> Path:
    """Crops of an unannotated (test-set) person: ``cropped_aligned/NAME/%05d.jpg`` for
    each 1-based frame number in ``frames``, cut from a tests/data clip, no annotation
    files. Returns the crop folder."""
    from PIL import Image

    folder = Path(root) / "cropped_aligned" / name
    folder.mkdir(parents=True, exist_ok=True)
    frames = sorted(int(k) for k in frames)
    n = max(frames, default=1)
    for k in frames:
        Image.fromarray(_face_crop(clip, _frame_at(clip, k, n))).save(folder / f"{k:05d}.jpg", quality=92)
    return folder


# --------------------------------------------------------------------------- malformed


CORRUPTIONS = ("header", "columns", "non_numeric", "range", "empty", "blank", "no_frames", "short")


def corrupt_annotation(root: str | Path, name: str, task: str, kind: str, *, frame: int = 5,
                       drop: int = 2) -> tuple[Path, int]:
    """Damage one annotation file of ``make_affwild_root`` in place.

    kind: "header" (wrong header), "columns" (a column too many at ``frame``),
    "non_numeric" ("abc" at ``frame``), "range" (out-of-range value at ``frame``),
    "empty" (0 bytes), "blank" (blank line at ``frame``), "no_frames" (header only),
    "short" (last ``drop`` frame lines dropped; the default 2 is within the length
    tolerance: valid, to be padded).
    Returns (file, the file line an error must name; 0 for "short").
    """
    manifest = read_manifest(root)
    file = Path(root) / TASK_DIRS[task] / manifest[name]["split"] / f"{name}.txt"
    lines = file.read_text().splitlines()
    line = frame + 1
    bad_value = {"expr": "9", "au": ",".join(["0"] * 11 + ["2"]), "va": "0.5,1.5"}[task]
    if kind == "header":
        lines[0], line = "Neutral,Anger", 1
    elif kind == "columns":
        lines[line - 1] += ",0"
    elif kind == "non_numeric":
        parts = lines[line - 1].split(",")
        lines[line - 1] = ",".join(["abc"] + parts[1:])
    elif kind == "range":
        lines[line - 1] = bad_value
    elif kind == "empty":
        lines, line = [], 1
    elif kind == "blank":
        lines[line - 1] = ""
    elif kind == "no_frames":
        lines, line = lines[:1], 2
    elif kind == "short":
        lines, line = lines[:-drop], 0
    else:
        raise ValueError(f"unknown corruption {kind!r} (use one of {CORRUPTIONS})")
    file.write_text("\n".join(lines) + ("\n" if lines else ""))
    return file, line
