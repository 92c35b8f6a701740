"""Configuration is checked when it is built: presets, overrides and direct construction."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from affstream.config import (
    DetectConfig,
    PipelineConfig,
    TrackConfig,
    list_presets,
    load_pipeline,
)
from affstream.errors import ConfigError

# dotted option -> (values of a wrong type, values out of range, valid edge values)
TABLE: dict[str, tuple[list, list, list]] = {
    "name": ([5, {"x": 1}, ["x"]], [], ["", "x y"]),
    "description": ([1.5, True], [], ["", "long text"]),
    "device": ([0, True, ["cpu"]], ["gpu", "cuda:", "cuda:x", "cpu:0", "", "mps"],
               ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "CUDA:1"]),
    "decode.video_stream": (["0", 0.0, True], [-2, 1024], [-1, 0, 1023]),
    "decode.threads": (["2", 2.0, True], [-1, 257], [0, 256]),
    "detect.detect_size_px": (["640", 640.0, False], [-1, 1, 31, 8193], [0, 32, 8192]),
    "detect.min_face_px": (["40", 40.5, True], [0, 11, 8193], [12, 8192]),
    "detect.thresholds": ([0.5, "0.6,0.7,0.7", (0.6, 0.7, "0.7"), (0.6, True, 0.7)],
                          [(0.6, 0.7), (0.6, 0.7, 0.7, 0.7), (), (0.0, 0.7, 0.7), (0.6, 1.1, 0.7), (0.6, 0.7, -0.1)],
                          [(1, 1, 1), (1e-6, 0.5, 1.0)]),
    "detect.pyramid_factor": (["0.7", True], [0, 0.09, 0.96, 1, 1.5, float("nan"), float("inf")], [0.1, 0.95]),
    "detect.min_score": (["0.9", {"x": 1}], [-0.01, 1.01, float("nan")], [0, 1, 0.0, 1.0]),
    "track.iou_min": (["0.3", True], [0, 0.0, -0.1, 1.5, float("nan"), 10**400], [1e-9, 1, 1.0]),
    "track.max_missed_frames": (["x", 1.0, True], [-1, 100_001], [0, 100_000]),
    "align.face_scale": (["0.72", True], [0, 1.01, -1, float("inf")], [1e-6, 1]),
    "embed.backbone": ([3, True], ["", "ViT-L-14", ":openai", "ViT-L-14:", " : ", "   "],
                       ["ViT-L-14:openai", "ViT-B-32:random", "ViT-B-32:/path/to/w.safetensors", "a:C:\\w.pt"]),
    "embed.batch_size": (["8", 8.0, True], [0, -1, 65_537], [1, 65_536]),
    "embed.precision": ([16, True], ["int8", "", "fp64"], ["auto", "fp32", "bf16", "fp16", "FP16"]),
    "head.head": ([1, False], ["", "  "], ["zeroshot", "heads/x.safetensors"]),
    "schedule.queue_frames": (["32", 32.0, True], [0, 1025], [1, 1024]),
    "schedule.detect_batch_frames": (["0", 0.0, False], [-1, 1025], [0, 1, 1024]),
    "schedule.detect_batch_cpu": (["16", 16.0, True], [0, 1025], [1, 1024]),
    "schedule.detect_batch_cuda": (["64", 64.0, True], [0, 1025], [1, 1024]),
    "schedule.embed_pool_frames": (["256", 2.5, True], [0, 65_537], [1, 65_536]),
    "schedule.window_batch": (["32", 32.0, True], [0, -5, 65_537], [1, 65_536]),
    "schedule.detect_every": (["3", 2.0, True], [0, -1, 1001], [1, 1000]),
    "schedule.live_detect_every": (["3", 2.0, True], [0, -1, 1001], [1, 1000]),
}


def _overrides(option: str, value) -> dict:
    if "." in option:
        section, key = option.split(".")
        return {section: {key: value}}
    return {option: value}


def _leaf_options() -> set[str]:
    config = PipelineConfig()
    names = set()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            names.update(f"{f.name}.{g.name}" for g in dataclasses.fields(value))
        else:
            names.add(f.name)
    return names


BAD_CASES = [
    pytest.param(option, value, id=f"{option}-{kind}-{value!r}")
    for option, (wrong_types, out_of_range, _) in TABLE.items()
    for kind, values in (("type", wrong_types), ("range", out_of_range))
    for value in values
]
GOOD_CASES = [
    pytest.param(option, value, id=f"{option}-{value!r}")
    for option, (_, _, valid) in TABLE.items()
    for value in valid
]


def test_table_covers_every_option():
    assert set(TABLE) == _leaf_options()


@pytest.mark.parametrize(("option", "value"), BAD_CASES)
def test_bad_value_is_a_one_line_config_error_naming_the_option(option, value):
    with pytest.raises(ConfigError) as info:
        PipelineConfig().with_overrides(**_overrides(option, value))
    message = str(info.value)
    # starts with the option itself (or one element of it: detect.thresholds[1])
    assert re.match(rf"{re.escape(option)}(\[\d\])? must be .+, got .+", message), message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize(("option", "value"), GOOD_CASES)
def test_valid_edge_values_pass(option, value):
    config = PipelineConfig().with_overrides(**_overrides(option, value))
    section, _, key = option.rpartition(".")
    holder = getattr(config, section) if section else config
    assert getattr(holder, key) == value


def test_tuple_element_is_named_by_index():
    with pytest.raises(ConfigError, match=r"^detect\.thresholds\[1\] must be a number in \(0, 1\], got 0$"):
        PipelineConfig().with_overrides(detect={"thresholds": [0.6, 0, 0.7]})
    with pytest.raises(ConfigError, match=r"^detect\.thresholds must be a list of 3 numbers"):
        PipelineConfig().with_overrides(detect={"thresholds": [0.6, 0.7]})


def test_toml_list_becomes_a_tuple():
    config = PipelineConfig().with_overrides(detect={"thresholds": [0.5, 0.6, 0.7]})
    assert config.detect.thresholds == (0.5, 0.6, 0.7)


def test_message_says_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        PipelineConfig().with_overrides(track={"max_missed_frames": "x"})
    assert str(info.value) == 'track.max_missed_frames must be an integer in 0..100000, got "x"'
    with pytest.raises(ConfigError, match="one of auto, fp32, bf16, fp16"):
        PipelineConfig().with_overrides(embed={"precision": "int8"})
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        PipelineConfig().with_overrides(device="gpu")


def test_shown_value_stays_on_one_line():
    with pytest.raises(ConfigError) as info:
        PipelineConfig().with_overrides(head={"head": "\n"})
    assert "\n" not in str(info.value) and str(info.value).startswith("head.head ")
    with pytest.raises(ConfigError) as info:
        PipelineConfig().with_overrides(device="x" * 1000)
    assert len(str(info.value)) < 200


# ------------------------------------------------------------------------- construction


def test_invalid_pipeline_config_cannot_be_constructed():
    with pytest.raises(ConfigError, match=r"^track\.iou_min "):
        PipelineConfig(track=TrackConfig(iou_min=0.0))
    with pytest.raises(ConfigError, match=r"^detect\.min_score "):
        PipelineConfig(detect=DetectConfig(min_score=1.01))
    with pytest.raises(ConfigError, match=r"^device "):
        PipelineConfig(device="tpu")
    with pytest.raises(ConfigError, match=r"^detect\.thresholds "):
        dataclasses.replace(PipelineConfig(), detect=DetectConfig(thresholds=[0.6, 0.7, 0.7]))


def test_section_of_the_wrong_type_is_refused():
    with pytest.raises(ConfigError, match=r"^track must be a TrackConfig"):
        PipelineConfig(track={"iou_min": 0.3})
    with pytest.raises(ConfigError, match=r"^embed must be a table"):
        PipelineConfig().with_overrides(embed="ViT-L-14:openai")


def test_override_with_a_section_instance():
    track = TrackConfig(iou_min=0.5, max_missed_frames=3)
    assert PipelineConfig().with_overrides(track=track).track == track
    with pytest.raises(ConfigError, match=r"^track\.max_missed_frames "):
        PipelineConfig().with_overrides(track=TrackConfig(max_missed_frames=-1))


# ------------------------------------------------------------------------------ overrides


def test_none_overrides_change_nothing():
    config = PipelineConfig()
    assert config.with_overrides(device=None, embed={"batch_size": None}, head=None) == config


def test_unknown_keys_are_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown option 'track\.iou' \(known: iou_min, max_missed_frames\)"):
        PipelineConfig().with_overrides(track={"iou": 0.5})
    with pytest.raises(ConfigError, match=r"unknown configuration key 'tracker' \(known: .*schedule.*\)"):
        PipelineConfig().with_overrides(tracker={"iou_min": 0.5})
    with pytest.raises(ConfigError, match="unknown configuration key 'to_dict'"):
        PipelineConfig().with_overrides(to_dict={})


def test_to_dict_round_trips_through_with_overrides():
    config = load_pipeline("smoke").with_overrides(
        device="cpu", detect={"thresholds": (0.5, 0.6, 0.7)}, schedule={"window_batch": 8}
    )
    data = config.to_dict()
    assert PipelineConfig().with_overrides(**data) == config
    assert PipelineConfig().with_overrides(**data).to_dict() == data


def test_to_dict_structure():
    data = PipelineConfig().to_dict()
    assert list(data) == ["name", "description", "device", "decode", "detect", "track", "align",
                          "embed", "head", "schedule"]
    assert data["detect"]["thresholds"] == (0.6, 0.7, 0.7)
    assert data["schedule"] == {"queue_frames": 32, "detect_batch_frames": 0, "detect_batch_cpu": 16,
                                "detect_batch_cuda": 64, "embed_pool_frames": 256, "window_batch": 32,
                                "detect_every": 1, "live_detect_every": 3}


def test_detect_batch_by_device():
    schedule = PipelineConfig().schedule
    assert (schedule.detect_batch("cpu"), schedule.detect_batch("cuda")) == (16, 64)
    fixed = PipelineConfig().with_overrides(schedule={"detect_batch_frames": 5}).schedule
    assert (fixed.detect_batch("cpu"), fixed.detect_batch("cuda")) == (5, 5)


# -------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_shipped_presets_load(name):
    assert name in list_presets()
    config = load_pipeline(name)
    assert config.name == name
    assert config.head.head == "zeroshot"


def test_every_shipped_preset_loads():
    for name in list_presets():
        assert isinstance(load_pipeline(name), PipelineConfig)


def _write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ('[track]\nmax_missed_frames = "x"\n', "track.max_missed_frames"),
        ('[decode]\nthreads = "x"\n', "decode.threads"),
        ("[decode]\nthreads = 1.5\n", "decode.threads"),
        ("[track]\niou_min = 0\n", "track.iou_min"),
        ("[detect]\nthresholds = [0.6, 0.0, 0.7]\n", "detect.thresholds[1]"),
        ("[detect]\nthresholds = [0.6, 0.7]\n", "detect.thresholds"),
        ("[schedule]\nwindow_batch = 0\n", "schedule.window_batch"),
        ("[embed]\nbatch_size = true\n", "embed.batch_size"),
        ('[embed]\nbackbone = "ViT-L-14"\n', "embed.backbone"),
        ('device = "gpu"\n', "device"),
        ("name = 3\n", "name"),
        ('[head]\nhead = ""\n', "head.head"),
    ],
)
def test_bad_preset_names_the_file_and_the_option(tmp_path, text, option):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {option} must be "), message
    assert "\n" not in message


def test_bad_preset_message_in_full(tmp_path):
    path = _write(tmp_path, '[track]\nmax_missed_frames = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_pipeline(str(path))
    assert str(info.value) == f'{path}: track.max_missed_frames must be an integer in 0..100000, got "x"'


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("bogus = 1\n", r"unknown configuration key 'bogus' \(known: .*device.*\)"),
        ("[track]\nbogus = 1\n", r"unknown option 'track\.bogus' \(known: iou_min, max_missed_frames\)"),
        ("decode = 3\n", r"\[decode\] must be a table"),
        ("[decode\n", r"not valid TOML"),
    ],
)
def test_preset_structure_errors(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert str(info.value).startswith(f"{path}: ")
    assert re.search(pattern, str(info.value)), str(info.value)


def test_valid_preset_with_edge_values(tmp_path):
    path = _write(
        tmp_path,
        'device = "cuda:1"\n'
        "[decode]\nthreads = 256\n"
        "[detect]\ndetect_size_px = 0\nmin_face_px = 12\nthresholds = [1, 1, 1]\npyramid_factor = 0.95\nmin_score = 0\n"
        "[track]\niou_min = 1\nmax_missed_frames = 0\n"
        "[align]\nface_scale = 1\n"
        '[embed]\nbackbone = "ViT-B-32:random"\nbatch_size = 1\nprecision = "bf16"\n'
        "[schedule]\nqueue_frames = 1\ndetect_batch_frames = 1024\nembed_pool_frames = 1\nwindow_batch = 1\n",
        name="edges.toml",
    )
    config = load_pipeline(path)
    assert config.name == "edges"
    assert config.detect.thresholds == (1, 1, 1)
    assert config.track.max_missed_frames == 0 and config.schedule.detect_batch("cpu") == 1024


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown pipeline preset 'nope'"):
        load_pipeline("nope")
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_pipeline(tmp_path / "missing.toml")


def test_moved_options_say_where_they_went(tmp_path):
    from affstream.config import PipelineConfig

    with pytest.raises(ConfigError, match=r"detect\.batch_frames' is now 'schedule\.detect_batch_frames'"):
        PipelineConfig().with_overrides(detect={"batch_frames": 16})
    preset = tmp_path / "old.toml"
    preset.write_text("[decode]\nqueue_frames = 8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"old\.toml: .*schedule\.queue_frames"):
        load_pipeline(preset)
