"""The offline schedule's many-input loop: one typed result per input, the failure
policy in the library, the observer hooks, and the run report as a record."""

from __future__ import annotations

import json

import pytest

import affstream
from affstream.api import resolve_config
from affstream.errors import ConfigError
from affstream.pipeline import load_stages
from affstream.pipeline.offline import InputObserver, annotate_inputs
from affstream.records import INPUT_DONE, INPUT_FAILED, InputResult, RunReport


@pytest.fixture(scope="module")
def smoke_stages():
    return load_stages(resolve_config("smoke", device="cpu"))


class Recorder(InputObserver):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def loaded(self, meaningful) -> None:
        self.events.append(("loaded",))

    def started(self, path, info) -> None:
        self.events.append(("started", path.name, info.frame_count))

    def frame(self, path, done) -> None:
        if done == 1:
            self.events.append(("frame", path.name, done))

    def finished(self, result) -> None:
        self.events.append(("finished", result.path.split("/")[-1], result.status))


def test_results_in_input_order_with_failures_in_place(smoke_stages, single_face_jpg, zero_byte_file, tmp_path):
    missing = tmp_path / "missing.mp4"
    recorder = Recorder()
    results = annotate_inputs([missing, single_face_jpg, zero_byte_file], tmp_path / "out",
                              stages=smoke_stages, observer=recorder)
    assert [r.status for r in results] == [INPUT_FAILED, INPUT_DONE, INPUT_FAILED]
    assert all(isinstance(r, InputResult) for r in results)
    assert "no such file" in results[0].error and "empty" in results[2].error
    done = results[1]
    assert done.ok and done.csv_path.is_file() and done.json_path.is_file()
    assert isinstance(done.report, RunReport) and done.report.counts.rows == 1
    assert json.loads(done.json_path.read_text())["counts"] == done.report.counts.to_dict()
    assert not results[0].outputs and results[0].report is None
    # the missing and the empty input are refused before the models load; then in order
    assert recorder.events == [
        ("finished", "missing.mp4", INPUT_FAILED),
        ("finished", zero_byte_file.name, INPUT_FAILED),
        ("loaded",),
        ("started", single_face_jpg.name, 1),
        ("frame", single_face_jpg.name, 1),
        ("finished", single_face_jpg.name, INPUT_DONE),
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["single_face.csv", "single_face.json"]


def test_no_model_is_loaded_when_no_input_exists(tmp_path, monkeypatch):
    import affstream.pipeline

    def no_models(*args, **kwargs):
        raise AssertionError("models loaded although no input exists")

    monkeypatch.setattr(affstream.pipeline, "load_stages", no_models)
    config = resolve_config("smoke", device="cpu")
    results = annotate_inputs(iter([tmp_path / "a.mp4", tmp_path]), tmp_path / "out", config=config)
    assert [r.status for r in results] == [INPUT_FAILED, INPUT_FAILED]
    assert "is a directory" in results[1].error


def test_output_collisions_are_refused_before_anything_runs(smoke_stages, single_face_jpg, tmp_path):
    other = tmp_path / "b" / single_face_jpg.name
    other.parent.mkdir()
    other.write_bytes(single_face_jpg.read_bytes())
    with pytest.raises(ConfigError, match="would both write"):
        annotate_inputs([single_face_jpg, other], tmp_path / "out", stages=smoke_stages)
    assert not (tmp_path / "out" / "single_face.csv").exists()


def test_exactly_one_of_config_and_stages(smoke_stages, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        annotate_inputs([], tmp_path, config=smoke_stages.config, stages=smoke_stages)


def test_report_is_a_snapshot(smoke_stages, single_face_mp4):
    run = affstream.annotate(single_face_mp4, stages=smoke_stages)
    rows = iter(run)
    for _ in range(10):
        next(rows)
    early = run.report()
    rest = sum(1 for _ in rows)
    assert rest == 62
    assert early.counts.rows == 10 and run.report().counts.rows == 72


def test_api_annotate_inputs_matches_the_cli_policy(smoke_stages, single_face_jpg, tmp_path):
    results = affstream.annotate_inputs([single_face_jpg, tmp_path / "nope.mp4"], tmp_path / "o", stages=smoke_stages)
    assert [r.ok for r in results] == [True, False]
    with pytest.raises(ConfigError, match="stages= or model options"):
        affstream.annotate_inputs([single_face_jpg], tmp_path / "o", stages=smoke_stages, head="zeroshot")


def test_a_new_report_never_stands_beside_an_old_csv(smoke_stages, single_face_jpg, tmp_path, monkeypatch):
    from affstream.errors import OutputError
    from affstream.writers.csv import CsvWriter

    out = tmp_path / "out"
    first = affstream.annotate_to_files(single_face_jpg, out, stages=smoke_stages)
    old_report = first.json_path.read_text()

    def failing_close(self):
        raise OutputError(f"{self.path}: cannot write the file: no space left on the device")

    monkeypatch.setattr(CsvWriter, "close", failing_close)
    with pytest.raises(OutputError):
        affstream.annotate_to_files(single_face_jpg, out, stages=smoke_stages)
    new_report = first.json_path.read_text()
    assert new_report != old_report  # the new report was published ...
    assert not first.csv_path.exists()  # ... and the old CSV is not left beside it
