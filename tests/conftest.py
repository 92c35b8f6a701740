"""Shared fixtures: paths of the real media in tests/data and synthetic media written
once per session with PyAV (see tests/media.py). All fixtures return ``pathlib.Path``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import media
import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"

# ------------------------------------------------------- lanes without torch (.ci/run)
# Python 3.12/3.13 lanes run the torch-free modules without torch installed. There a
# test marked `torch` (it starts a process that needs torch), and a test whose code
# raises ModuleNotFoundError for torch or what needs it, is reported as skipped with
# that reason; with torch installed neither rule changes anything.
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None
_NEEDS_TORCH = {"torch", "torchvision", "open_clip"}
_SKIP_REASON = "needs torch, which this CI lane does not install"


def _needs_torch(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in _NEEDS_TORCH:
            return True
        error = error.__cause__ or error.__context__
    return False


def pytest_collection_modifyitems(config, items):
    if not TORCH_INSTALLED:
        for item in items:
            if item.get_closest_marker("torch"):
                item.add_marker(pytest.mark.skip(reason=_SKIP_REASON))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if TORCH_INSTALLED or call.excinfo is None or not _needs_torch(call.excinfo.value):
        return
    report = outcome.get_result()
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {_SKIP_REASON}")


def _data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"test media missing: {path}")
    return path


# ------------------------------------------------------------------ real media (tests/data)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: real clips and photos (see tests/data/NOTICE.md)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def single_face_mp4() -> Path:
    """640x360 H.264, 30 fps, 72 frames, one face."""
    return _data_file("single_face.mp4")


@pytest.fixture(scope="session")
def wolfgang_mp4() -> Path:
    """640x360 H.264, 23.976 fps, 472 frames, one face partly covered by a hand."""
    return _data_file("WolfgangLanger_Pexels.mp4")


@pytest.fixture(scope="session")
def no_face_mp4() -> Path:
    """960x540 H.264, no face. Declares 98 frames; 95 decode (3 dropped by its edit list)."""
    return _data_file("no_face.mp4")


@pytest.fixture(scope="session")
def single_face_jpg() -> Path:
    """572x562 JPEG photo with one face."""
    return _data_file("single_face.jpg")


@pytest.fixture(scope="session")
def multi_face_jpg() -> Path:
    """1000x667 JPEG photo with five faces."""
    return _data_file("multi_face.jpg")


# ----------------------------------------------------------------- synthetic media (PyAV)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session folder holding the synthetic media below."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def cfr_clip(media_dir: Path) -> Path:
    """160x120, 30 fps, 30 frames; frame i shows number i (media.read_frame_number)."""
    return media.write_cfr_clip(media_dir / "cfr.mp4", frames=30, fps=30)


@pytest.fixture(scope="session")
def vfr_clip(media_dir: Path) -> Path:
    """160x120 variable frame rate: frame i at exactly media.VFR_PTS_MS[i] milliseconds."""
    return media.write_vfr_clip(media_dir / "vfr.mp4")


@pytest.fixture(scope="session")
def rotated_clip(media_dir: Path) -> Path:
    """Stored 160x120 with a display matrix 'rotate 90 deg clockwise': decodes upright to
    120x160 (W x H); the red marker of the stored top-left corner ends top-right."""
    return media.write_rotated_clip(media_dir / "rotated.mp4", rotation_cw=90)


@pytest.fixture(scope="session")
def truncated_clip(media_dir: Path) -> Path:
    """60-frame MP4 (index first) cut off at half its bytes: decodes 29 frames (FFmpeg's own count)."""
    return media.write_truncated_clip(media_dir / "truncated.mp4", frames=60)


@pytest.fixture(scope="session")
def no_pts_clip(media_dir: Path) -> Path:
    """Raw H.264 elementary stream, 8 frames at 25 fps, none with a PTS."""
    if media.video_codec() != "libx264":
        pytest.skip("this PyAV build has no libx264 encoder")
    return media.write_raw_h264(media_dir / "no_pts.h264", frames=8, fps=25)


@pytest.fixture(scope="session")
def audio_only_file(media_dir: Path) -> Path:
    """0.5 s mono sine in a WAV file: no video stream."""
    return media.write_audio_only(media_dir / "tone.wav")


@pytest.fixture(scope="session")
def zero_byte_file(media_dir: Path) -> Path:
    """Empty file named empty.mp4."""
    return media.write_zero_byte(media_dir / "empty.mp4")


@pytest.fixture(scope="session")
def text_file(media_dir: Path) -> Path:
    """Plain text named notes.mp4."""
    return media.write_text_file(media_dir / "notes.mp4")


# ------------------------------------------------------------------ environment


@pytest.fixture(scope="session", autouse=True)
def _affstream_cache(tmp_path_factory):
    """Derived caches (text embeddings of the zero-shot head) go to a temp dir, never
    to the user's ~/.cache. Tests that need their own cache set AFFSTREAM_CACHE again."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AFFSTREAM_CACHE", str(tmp_path_factory.mktemp("affstream-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids contention
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
