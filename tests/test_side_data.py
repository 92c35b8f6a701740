"""Side data through the one reader (``affstream.io.avcompat.side_data_bytes``).

PyAV has given ``VideoFrame.side_data`` three shapes: a sequence of ``SideData`` (up to
14), a ``Mapping`` subclass whose iteration still yields ``SideData`` (15 to 18.1.0) and a
true mapping whose iteration yields the ``Type`` keys (18.1.1 and later). The installed
PyAV exercises its shape on real files (the oldest CI lane runs 18.0, the others 18.1.1+);
every shape runs on stand-in objects, so all branches run in every CI lane.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path

import av
import media
import numpy as np
import pytest
from PIL import Image

from affstream.io import probe
from affstream.io.avcompat import side_data_bytes
from affstream.io.orientation import Orientation

DATA = Path(__file__).parent / "data"


class _Type(Enum):  # stands in for av.sidedata.sidedata.Type
    SEI_UNREGISTERED = 20
    DISPLAYMATRIX = 6


class _Side(bytes):
    """A SideData stand-in: its bytes, and its type (the old sequence shape)."""

    def __new__(cls, kind: _Type, raw: bytes):
        side = super().__new__(cls, raw)
        side.type = kind
        return side


class _SequenceShape:
    """PyAV <= 18.1.0: iterating yields SideData objects."""

    def __init__(self, *sides: _Side) -> None:
        self.sides = list(sides)

    def __iter__(self) -> Iterator[_Side]:
        return iter(self.sides)

    def __len__(self) -> int:
        return len(self.sides)

    def __getitem__(self, index: int) -> _Side:
        return self.sides[index]


class _MappingOfSides(Mapping):
    """PyAV 15 to 18.1.0: a Mapping subclass whose iteration still yields SideData."""

    def __init__(self, *sides: _Side) -> None:
        self.sides = list(sides)

    def __iter__(self):
        return iter(self.sides)

    def __len__(self) -> int:
        return len(self.sides)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.sides[key]
        return next(side for side in self.sides if side.type == key)


class _MappingShape(Mapping):
    """PyAV >= 18.1.1: iterating yields Type keys; values are SideData."""

    def __init__(self, *sides: _Side) -> None:
        self.by_type = {side.type: side for side in sides}

    def __iter__(self):
        return iter(self.by_type)

    def __len__(self) -> int:
        return len(self.by_type)

    def __getitem__(self, key):
        return self.by_type[key]


class _Frame:
    def __init__(self, side_data, rotation: int = 0) -> None:
        self._side_data = side_data
        self.rotation = rotation
        self.side_data_reads = 0

    @property
    def side_data(self):
        self.side_data_reads += 1
        if isinstance(self._side_data, Exception):
            raise self._side_data
        return self._side_data


def _matrix(rotation_ccw_deg: int) -> bytes:
    """FFmpeg's display matrix (16.16 fixed point) for a counter-clockwise rotation."""
    theta = np.radians(rotation_ccw_deg)
    c, s = round(np.cos(theta) * 65536), round(np.sin(theta) * 65536)
    return np.array([c, -s, 0, s, c, 0, 0, 0, 1 << 30], dtype=np.int32).tobytes()


class _Stream:
    def __init__(self, codec: str) -> None:
        self.codec_context = type("Codec", (), {"name": codec})()
        self.metadata: dict[str, str] = {}


SHAPES = pytest.mark.parametrize("shape", [_SequenceShape, _MappingOfSides, _MappingShape],
                                 ids=["sequence", "mapping-of-sides", "mapping-of-types"])


@SHAPES
def test_both_api_shapes_find_the_display_matrix(shape):
    matrix = _matrix(90)
    frame = _Frame(shape(_Side(_Type.SEI_UNREGISTERED, b"x" * 40), _Side(_Type.DISPLAYMATRIX, matrix)))
    assert side_data_bytes(frame, "DISPLAYMATRIX") == matrix
    assert side_data_bytes(frame, "ICC_PROFILE") is None
    # a display matrix of "90 deg counter-clockwise" is shown by turning 270 deg clockwise
    assert Orientation.of_frame(frame, _Stream("h264"), "x.mp4", False) == Orientation(rotation_cw=270)


@SHAPES
def test_both_api_shapes_without_a_display_matrix(shape):
    frame = _Frame(shape(_Side(_Type.SEI_UNREGISTERED, b"sei")))
    assert side_data_bytes(frame, "DISPLAYMATRIX") is None
    assert Orientation.of_frame(frame, _Stream("h264"), "x.mp4", False) == Orientation()
    assert Orientation.of_frame(_Frame(shape()), _Stream("h264"), "x.mp4", False) == Orientation()


def test_unnamed_side_data_type_falls_back_to_the_rotation_pyav_reads():
    """Older PyAV raised ValueError listing a side data type newer than itself."""
    frame = _Frame(ValueError("unknown side data type 99"), rotation=-90)
    assert Orientation.of_frame(frame, _Stream("h264"), "x.mp4", False) == Orientation(rotation_cw=90)


@pytest.mark.parametrize("codec", ["png", "apng"])
def test_png_frames_are_never_asked_for_side_data(codec):
    """Listing a PNG frame's side data (ICC profile) is a double free in PyAV 18.1."""
    frame = _Frame(AssertionError("side data listed"), rotation=0)
    assert Orientation.of_frame(frame, _Stream(codec), "x.png", False) == Orientation()
    assert frame.side_data_reads == 0


# ---------------------------------------------------------------- the installed PyAV


def _first_frame(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        return frame, side_data_bytes(frame, "DISPLAYMATRIX"), Orientation.of_frame(frame, stream, str(path), False)


def test_installed_pyav_x264_frames_with_sei_side_data():
    """Real x264 frames carry SEI side data (the type that broke PyAV 18.1.1 users)."""
    frame, matrix, orientation = _first_frame(DATA / "single_face.mp4")
    assert side_data_bytes(frame, "SEI_UNREGISTERED")  # x264's settings string
    assert matrix is None
    assert orientation == Orientation()


@pytest.mark.parametrize("rotation_cw, mirror", [(90, False), (180, False), (270, True)])
def test_installed_pyav_reads_written_display_matrices(tmp_path, rotation_cw, mirror):
    path = media.write_rotated_clip(tmp_path / "r.mp4", rotation_cw=rotation_cw, mirror=mirror)
    _, raw, orientation = _first_frame(path)
    assert raw is not None and len(raw) == 36
    # write_rotated_clip mirrors after rotating; affstream mirrors first, then rotates
    expected = Orientation(rotation_cw=(360 - rotation_cw) % 360 if mirror else rotation_cw, mirror=mirror)
    assert Orientation.from_matrix(np.frombuffer(raw, dtype=np.int32)) == expected
    assert orientation == expected
    assert probe(path).rotation_deg == expected.rotation_cw


def _ffmpeg_rotate(source: Path, path: Path, rotation_cw: int) -> None:
    """Re-mux ``source`` with a display matrix by the ffmpeg CLI, without re-encoding:
    ``-display_rotation`` (FFmpeg 6+, counter-clockwise degrees) or, on older FFmpeg, the
    ``rotate`` tag the MP4 muxer turns into the matrix (clockwise degrees)."""
    common = ["ffmpeg", "-v", "error", "-y"]
    done = subprocess.run(common + ["-display_rotation", str(-rotation_cw), "-i", str(source), "-c", "copy", str(path)],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "display_rotation" in done.stderr:
        subprocess.run(common + ["-i", str(source), "-c", "copy", "-metadata:s:v:0", f"rotate={rotation_cw}", str(path)],
                       check=True, timeout=60)
    else:
        assert done.returncode == 0, done.stderr


def _ffmpeg_first_frame(path: Path) -> np.ndarray:
    """The first frame as the ffmpeg CLI shows it (its autorotate applied), RGB."""
    png = path.with_suffix(".png")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-frames:v", "1", str(png)], check=True, timeout=60)
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (.ci/run installs it)")
@pytest.mark.parametrize("rotation_cw", [90, 180, 270])
def test_installed_pyav_on_ffmpeg_rotated_real_clip(tmp_path, rotation_cw):
    """The real x264 clip re-muxed by the ffmpeg CLI with a display rotation, as a phone
    writes it (SEI and display-matrix side data side by side on every frame): affstream
    shows the first frame as the ffmpeg CLI itself shows it."""
    path = tmp_path / "rotated.mp4"
    _ffmpeg_rotate(DATA / "single_face.mp4", path, rotation_cw)
    frame, raw, orientation = _first_frame(path)
    assert raw is not None and orientation.rotation_cw in (90, 180, 270)
    ours = orientation.apply(frame.to_ndarray(format="rgb24"))
    theirs = _ffmpeg_first_frame(path)
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean() < 3.0
    assert probe(path).rotation_deg == orientation.rotation_cw
