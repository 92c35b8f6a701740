"""Aff-Wild2 annotation reading: parsing, every error message, merging and padding."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from synth_affwild import annotation_text, corrupt_annotation, make_affwild_root, read_manifest

from affstream.errors import ConfigError, DataError
from affstream.train.affwild import (
    SPLITS,
    TASK_DIRS,
    PersonLabels,
    _parse_lines,
    check_length,
    read_annotation_file,
    read_video_list,
    scan_affwild,
    side_of,
    video_of,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_affwild_root(tmp_path_factory.mktemp("affwild") / "root", with_crops=False)


@pytest.fixture
def root(pristine, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(pristine, copy)
    return copy


def _file(root, name, task):
    split = read_manifest(root)[name]["split"]
    return root / TASK_DIRS[task] / split / f"{name}.txt"


def test_reads_each_task_as_written(pristine):
    manifest = read_manifest(pristine)
    for name, entry in manifest.items():
        expr = read_annotation_file(_file(pristine, name, "expr"), "expr")
        au = read_annotation_file(_file(pristine, name, "au"), "au")
        va = read_annotation_file(_file(pristine, name, "va"), "va")
        assert expr.dtype == np.int64 and expr.shape == (40,)
        assert au.dtype == np.int8 and au.shape == (40, 12)
        assert va.dtype == np.float32 and va.shape == (40, 2)
        np.testing.assert_array_equal(expr, entry["labels"]["expr"])
        np.testing.assert_array_equal(au, entry["labels"]["au"])
        written = np.asarray(entry["labels"]["va"], dtype=np.float32)
        unannotated = (written == -5).any(axis=1)
        assert unannotated.any() and (expr == -1).any() and (au == -1).all(axis=1).any()
        assert np.isnan(va[unannotated]).all()
        np.testing.assert_allclose(va[~unannotated], written[~unannotated], atol=1e-6)


def test_fast_and_line_parsers_agree(pristine):
    for name in read_manifest(pristine):
        for task in TASK_DIRS:
            file = _file(pristine, name, task)
            slow = _parse_lines(file, file.read_text().splitlines()[1:], task)
            fast = read_annotation_file(file, task)
            assert fast.dtype == slow.dtype
            np.testing.assert_array_equal(fast, slow)


def test_va_either_value_minus5_makes_both_nan(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("valence,arousal\n0.5,-5\n-5,0.25\n-1,1\n0.125,-0.5\n\n\n")
    va = read_annotation_file(path, "va")
    assert va.shape == (4, 2)
    assert np.isnan(va[:2]).all()
    np.testing.assert_array_equal(va[2:], [[-1, 1], [0.125, -0.5]])


def test_header_tolerates_spaces_and_bom(tmp_path):
    path = tmp_path / "e.txt"
    path.write_bytes("\ufeffNeutral, Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\r\n3\r\n-1\r\n".encode())
    np.testing.assert_array_equal(read_annotation_file(path, "expr"), [3, -1])


ERROR_CASES = [
    ("expr", "header", "header 'Neutral,Anger' is not the expr header"),
    ("au", "header", "header 'Neutral,Anger' is not the au header"),
    ("va", "header", "header 'Neutral,Anger' is not the va header"),
    ("expr", "columns", "2 values instead of 1"),
    ("au", "columns", "13 values instead of 12"),
    ("va", "columns", "3 values instead of 2"),
    ("expr", "non_numeric", "non-numeric value 'abc'"),
    ("au", "non_numeric", "non-numeric value 'abc'"),
    ("va", "non_numeric", "non-numeric value 'abc'"),
    ("expr", "range", "expression 9 out of range"),
    ("au", "range", "AU value 2 out of range"),
    ("va", "range", "value 1.5 out of range"),
    ("expr", "empty", "empty file"),
    ("au", "blank", "blank line"),
    ("va", "no_frames", "no frame lines after the header"),
]


@pytest.mark.parametrize("task,kind,problem", ERROR_CASES)
def test_every_error_names_file_line_and_fix(root, task, kind, problem):
    file, line = corrupt_annotation(root, "vid02", task, kind, frame=7)
    with pytest.raises(DataError) as info:
        read_annotation_file(file, task)
    message = str(info.value)
    assert message.startswith(f"{file}:{line}: {problem}; ")
    assert "\n" not in message and len(message.split("; ")[1]) > 10
    # scanning the whole root stops on the same file and line
    with pytest.raises(DataError, match=f":{line}: "):
        scan_affwild(root)


def test_va_out_of_range_but_not_minus5_is_rejected(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("valence,arousal\n0.1,0.2\n-4,0.1\n")
    with pytest.raises(DataError, match=r"v\.txt:3: value -4 out of range"):
        read_annotation_file(path, "va")
    path.write_text("valence,arousal\nnan,0.1\n")
    with pytest.raises(DataError, match=r"v\.txt:2: value nan out of range"):
        read_annotation_file(path, "va")


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        read_annotation_file(tmp_path / "nope.txt", "expr")
    with pytest.raises(ConfigError, match="unknown task 'pose'"):
        read_annotation_file(tmp_path / "nope.txt", "pose")


def test_scan_merges_tasks_per_person(pristine):
    people = scan_affwild(pristine)
    manifest = read_manifest(pristine)
    assert list(people) == sorted(manifest) == ["vid01", "vid02", "vid03_left", "vid03_right"]
    for name, person in people.items():
        assert isinstance(person, PersonLabels)
        assert person.video == manifest[name]["video"] and person.split == manifest[name]["split"]
        assert person.n_frames == 40 and person.tasks == ("expr", "au", "va")
        assert set(person.files) == {"expr", "au", "va"}
        np.testing.assert_array_equal(person.expr, manifest[name]["labels"]["expr"])
    assert people["vid03_left"].video == people["vid03_right"].video == "vid03"
    assert {p.split for p in people.values()} == set(SPLITS)


def test_scan_subsets_of_tasks_and_splits(pristine):
    only_va = scan_affwild(pristine, tasks=("va",), splits=("Validation_Set",))
    assert list(only_va) == ["vid02"]
    assert only_va["vid02"].expr is None and only_va["vid02"].au is None
    assert only_va["vid02"].va.shape == (40, 2)
    with pytest.raises(ConfigError, match="unknown split 'Test_Set'"):
        scan_affwild(pristine, splits=("Test_Set",))


def test_short_task_file_is_padded_with_a_warning(root, caplog):
    file, _ = corrupt_annotation(root, "vid01", "au", "short")
    with caplog.at_level(logging.WARNING, logger="affstream"):
        person = scan_affwild(root)["vid01"]
    assert person.n_frames == 40 and person.au.shape == (40, 12)
    assert (person.au[-2:] == -1).all()
    original = np.asarray(read_manifest(root)["vid01"]["labels"]["au"])
    np.testing.assert_array_equal(person.au[:38], original[:38])
    assert any(str(file) in r.getMessage() and "padding" in r.getMessage() for r in caplog.records)


def test_task_file_short_beyond_the_tolerance_is_an_error(root):
    file, _ = corrupt_annotation(root, "vid02", "va", "short", drop=3)
    longest = _file(root, "vid02", "expr")
    with pytest.raises(DataError) as info:
        scan_affwild(root)
    message = str(info.value)
    assert message.startswith(f"{file}: 37 frame lines but 40 in {longest} (3 fewer, tolerance 2); ")
    assert "\n" not in message
    # the other tasks alone are fine; with only the short one, it is the longest
    assert scan_affwild(root, tasks=("expr", "au"))["vid02"].n_frames == 40
    assert scan_affwild(root, tasks=("va",))["vid02"].n_frames == 37


def test_person_in_two_splits_is_an_error(root):
    source = _file(root, "vid01", "va")
    other = next(s for s in SPLITS if s not in str(source))
    target = root / TASK_DIRS["va"] / other / "vid01.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    with pytest.raises(DataError, match=r"'vid01' is in .* but also in .*one split only"):
        scan_affwild(root)


def test_bad_roots(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        scan_affwild(tmp_path / "missing")
    with pytest.raises(DataError, match="no annotation folders found"):
        scan_affwild(tmp_path)


def test_names_sides_and_video():
    assert video_of("video3_left") == "video3" and side_of("video3_left") == "left"
    assert video_of("10-60-1280x720_right") == "10-60-1280x720" and side_of("x_right") == "right"
    assert video_of("video3") == "video3" and side_of("video3") is None
    assert video_of("_left") == "_left"


def test_check_length_tolerance_and_message(pristine):
    person = scan_affwild(pristine)["vid02"]
    for n in (38, 40, 42):
        check_length(person, n, "v.mp4")
    with pytest.raises(DataError) as info:
        check_length(person, 30, "videos/vid02.mp4")
    message = str(info.value)
    assert "vid02.txt" in message and "40 annotated frames" in message
    assert "videos/vid02.mp4 decodes to 30 frames" in message and "10 more" in message
    with pytest.raises(DataError, match="3 fewer"):
        check_length(person, 43, "v.mp4")


def test_read_video_list(tmp_path):
    path = tmp_path / "test_set.txt"
    path.write_text("# test set\nvideo1\n\n video2_left.txt\n10-60-1280x720.mp4\n")
    assert read_video_list(path) == ["video1", "video2_left", "10-60-1280x720"]
    path.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="video list is empty"):
        read_video_list(path)


def test_annotation_text_round_trips(tmp_path):
    values = np.array([[0.5, -0.25], [np.nan, np.nan]], dtype=np.float32)
    path = tmp_path / "v.txt"
    path.write_text(annotation_text("va", values))
    assert path.read_text() == "valence,arousal\n0.500,-0.250\n-5,-5\n"
    np.testing.assert_array_equal(read_annotation_file(path, "va"), values)
