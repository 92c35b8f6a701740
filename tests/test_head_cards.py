"""Untrusted head cards and weights: validation before allocation, dims round trips,
old-format cards, extra config keys, and safetensors header checks."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import affstream.heads.base as base
from affstream.errors import ConfigError, WeightsError
from affstream.heads.base import HeadCard, check_safetensors, load_head_checkpoint, read_card, save_head
from affstream.heads.mlp import MLPDims, MLPHead
from affstream.heads.temporal import TemporalDims, TemporalHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOLDEN = Path(__file__).parent / "golden" / "heads"
DELETE = object()


def _golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[path]`` for a dotted path with optional [index] parts; DELETE removes it."""
    parts = path.replace("[", ".").replace("]", "").split(".")
    target = data
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    key = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[key]
    else:
        target[key] = value


def _checkpoint(tmp_path: Path, golden: str, card: dict[str, Any], stem: str = "head") -> Path:
    """A checkpoint in tmp_path: the committed weights of ``golden`` beside ``card``."""
    shutil.copyfile(GOLDEN / f"{golden}.safetensors", tmp_path / f"{stem}.safetensors")
    (tmp_path / f"{stem}.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return tmp_path / f"{stem}.safetensors"


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a head module is constructed or a tensor file is read."""

    def refuse(*args, **kwargs):
        raise AssertionError("a bad card must be refused before weights are read or modules built")

    import safetensors.torch

    monkeypatch.setattr(MLPHead, "__init__", refuse)
    monkeypatch.setattr(TemporalHead, "__init__", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


NAN, INF = float("nan"), float("inf")

# (golden card to start from, dotted field to set, value, text the error must name)
BAD_CARDS = [
    # card fields
    ("mlp", "feature_dim", "64", "feature_dim"),
    ("mlp", "feature_dim", 64.0, "feature_dim"),
    ("mlp", "feature_dim", True, "feature_dim"),
    ("mlp", "feature_dim", None, "feature_dim"),
    ("mlp", "feature_dim", 0, "feature_dim"),
    ("mlp", "feature_dim", 16385, "feature_dim"),
    ("mlp", "feature_dim", 10**12, "feature_dim"),
    ("mlp", "feature_dim", DELETE, "feature_dim is missing"),
    ("mlp", "name", 5, "name"),
    ("mlp", "name", "", "name"),
    ("mlp", "name", "two\nlines", "name"),
    ("mlp", "name", "x" * 201, "name"),
    ("mlp", "kind", 3, "kind"),
    ("mlp", "kind", "resnet", "kind"),
    ("mlp", "backbone", None, "backbone"),
    ("mlp", "backbone", "", "backbone"),
    ("mlp", "tasks", "va", "tasks"),
    ("mlp", "tasks", [], "tasks"),
    ("mlp", "tasks", None, "tasks"),
    ("mlp", "tasks", ["va", "va"], "tasks[1]"),
    ("mlp", "tasks", ["va", "pose"], "tasks[1]"),
    ("mlp", "tasks", [1], "tasks[0]"),
    ("mlp", "tasks", ["va", "expr", "au", "va"], "tasks"),
    ("mlp", "expr_labels", list(reversed(_golden("mlp")["expr_labels"])), "expr_labels"),
    ("mlp", "au_labels", _golden("mlp")["au_labels"][:-1], "au_labels"),
    ("mlp", "au_labels", "AU1", "au_labels"),
    ("mlp", "au_thresholds[3]", NAN, "au_thresholds[3]"),
    ("mlp", "au_thresholds[3]", None, "au_thresholds[3]"),
    ("mlp", "au_thresholds[3]", INF, "au_thresholds[3]"),
    ("mlp", "au_thresholds[3]", "0.5", "au_thresholds[3]"),
    ("mlp", "au_thresholds[3]", True, "au_thresholds[3]"),
    ("mlp", "au_thresholds[11]", 1.5, "au_thresholds[11]"),
    ("mlp", "au_thresholds[0]", -0.1, "au_thresholds[0]"),
    ("mlp", "au_thresholds", [0.5] * 11, "au_thresholds"),
    ("mlp", "au_thresholds", 0.5, "au_thresholds"),
    ("mlp", "au_thresholds", None, "au_thresholds"),
    ("mlp", "causal", "yes", "causal"),
    ("mlp", "causal", 1, "causal"),
    ("mlp", "meaningful", None, "meaningful"),
    ("mlp", "version", 2, "version"),
    ("mlp", "version", "1", "version"),
    ("mlp", "version", True, "version"),
    ("mlp", "metrics", [], "metrics"),
    ("mlp", "config", [], "config"),
    ("mlp", "bogus", 1, "unknown card field(s) 'bogus'"),
    ("mlp", "window_length", 10, "window_stride"),  # stride stays null
    # MLP dims
    ("mlp", "config.width", "16", "config.width"),
    ("mlp", "config.width", 16.5, "config.width"),
    ("mlp", "config.width", True, "config.width"),
    ("mlp", "config.width", 0, "config.width"),
    ("mlp", "config.width", 16385, "config.width"),
    ("mlp", "config.width", 10**9, "config.width"),
    ("mlp", "config.width", None, "config.width"),
    ("mlp", "config.dropout", "0.1", "config.dropout"),
    ("mlp", "config.dropout", 1.0, "config.dropout"),
    ("mlp", "config.dropout", -0.1, "config.dropout"),
    ("mlp", "config.dropout", NAN, "config.dropout"),
    ("mlp", "config.dropout", None, "config.dropout"),
    ("mlp", "config.dropout", False, "config.dropout"),
    ("mlp", "config.hidden_layers", 0, "config.hidden_layers"),
    ("mlp", "config.hidden_layers", 65, "config.hidden_layers"),
    ("mlp", "config.hidden_layers", 60000, "config.hidden_layers"),
    ("mlp", "config.hidden_layers", 3.0, "config.hidden_layers"),
    ("mlp", "config.hidden_layers", "3", "config.hidden_layers"),
    # temporal card fields
    ("temporal", "window_length", "24", "window_length"),
    ("temporal", "window_length", 0, "window_length"),
    ("temporal", "window_length", 100001, "window_length"),
    ("temporal", "window_length", 24.0, "window_length"),
    ("temporal", "window_length", None, "window_length"),
    ("temporal", "window_stride", 0, "window_stride"),
    ("temporal", "window_stride", 25, "window_stride"),
    ("temporal", "window_stride", 16.0, "window_stride"),
    ("temporal", "window_stride", "16", "window_stride"),
    # temporal dims
    ("temporal", "config.d_model", 33, "config.d_model"),
    ("temporal", "config.d_model", 0, "config.d_model"),
    ("temporal", "config.d_model", 4098, "config.d_model"),
    ("temporal", "config.d_model", "32", "config.d_model"),
    ("temporal", "config.d_model", 32.0, "config.d_model"),
    ("temporal", "config.n_heads", 3, "config.d_model"),  # 32 is not divisible by 3
    ("temporal", "config.n_heads", 0, "config.n_heads"),
    ("temporal", "config.n_heads", 65, "config.n_heads"),
    ("temporal", "config.n_heads", DELETE, "config.n_heads is missing"),
    ("temporal", "config.n_layers", 0, "config.n_layers"),
    ("temporal", "config.n_layers", 65, "config.n_layers"),
    ("temporal", "config.n_layers", True, "config.n_layers"),
    ("temporal", "config.kernel_size", 0, "config.kernel_size"),
    ("temporal", "config.kernel_size", 32, "config.kernel_size"),
    ("temporal", "config.kernel_size", 3.0, "config.kernel_size"),
    ("temporal", "config.tcn_dilations", "1248", "config.tcn_dilations"),
    ("temporal", "config.tcn_dilations", 4, "config.tcn_dilations"),
    ("temporal", "config.tcn_dilations", [1] * 17, "config.tcn_dilations"),
    ("temporal", "config.tcn_dilations", [1, 0], "config.tcn_dilations[1]"),
    ("temporal", "config.tcn_dilations", [1, 2048], "config.tcn_dilations[1]"),
    ("temporal", "config.tcn_dilations", [1, True], "config.tcn_dilations[1]"),
    ("temporal", "config.tcn_dilations", [1, 2.0], "config.tcn_dilations[1]"),
    ("temporal", "config.dropout", 1.0, "config.dropout"),
    ("temporal", "config.dropout", "0.1", "config.dropout"),
    ("temporal", "config.dropout", INF, "config.dropout"),
    ("temporal", "config.positional_encoding", "learned", "config.positional_encoding"),
]


@pytest.mark.parametrize(
    ("golden", "path", "value", "named"),
    BAD_CARDS,
    ids=[f"{g}-{p}={'DELETE' if v is DELETE else repr(v)[:20]}" for g, p, v, _ in BAD_CARDS],
)
def test_bad_card_is_one_line_config_error_naming_the_field(tmp_path, nothing_built, golden, path, value, named):
    card = _golden(golden)
    _set(card, path, value)
    weights = _checkpoint(tmp_path, golden, card)
    with pytest.raises(ConfigError) as info:
        load_head_checkpoint(weights)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"{tmp_path / 'head.json'}: "), message
    assert named in message, message


@pytest.mark.parametrize(
    ("golden", "config", "hint"),
    [
        ("mlp", {"width": 16384, "hidden_layers": 64}, "config.hidden_layers"),
        ("temporal", {"d_model": 4096, "n_layers": 64}, "config.n_layers"),
        ("temporal", {"d_model": 4096, "kernel_size": 31, "tcn_dilations": [1] * 16}, "config.tcn_dilations"),
    ],
)
def test_oversized_architecture_is_refused_by_its_estimated_size(tmp_path, nothing_built, golden, config, hint):
    card = _golden(golden)
    card["config"].update(config)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="parameters, more than the 500,000,000 allowed") as info:
        load_head_checkpoint(_checkpoint(tmp_path, golden, card))
    assert time.perf_counter() - start < 1.0
    assert hint in str(info.value) and "\n" not in str(info.value)


def test_huge_hidden_layers_is_refused_fast_and_allocates_nothing(tmp_path, nothing_built):
    card = _golden("mlp")
    card["config"]["hidden_layers"] = 60000
    weights = _checkpoint(tmp_path, "mlp", card)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"config\.hidden_layers must be an integer in \[1, 64\], got 60000"):
        load_head_checkpoint(weights)
    assert time.perf_counter() - start < 1.0


def test_constructors_check_before_allocating(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no layer may be built for a refused architecture")

    monkeypatch.setattr(torch.nn.Linear, "__init__", refuse)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"config\.hidden_layers"):
        MLPHead(32, ("expr",), hidden_layers=60000)
    with pytest.raises(ConfigError, match="parameters"):
        MLPHead(32, ("expr",), width=16384, hidden_layers=64)
    with pytest.raises(ConfigError, match="feature_dim"):
        MLPHead(10**9, ("expr",))
    with pytest.raises(ConfigError, match=r"config\.dropout"):
        MLPHead(32, ("expr",), dropout=float("nan"))
    with pytest.raises(ConfigError, match="parameters"):
        TemporalHead(32, ("expr",), d_model=4096, n_layers=64)
    with pytest.raises(ConfigError, match="window_stride"):
        TemporalHead(32, ("expr",), window_length=10, window_stride=20)
    with pytest.raises(ConfigError, match=r"config\.tcn_dilations"):
        TemporalHead(32, ("expr",), tcn_dilations="124")
    assert time.perf_counter() - start < 1.0


def test_from_dict_refuses_non_objects():
    with pytest.raises(ConfigError, match="JSON object"):
        HeadCard.from_dict([], "c.json")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"c\.json: name is missing"):
        HeadCard.from_dict({"kind": "mlp"}, "c.json")


@pytest.mark.parametrize(
    "text",
    ["{", "[" * 100_000, '{"feature_dim": ' + "9" * 5000 + "}", "[1, 2]", "null"],
    ids=["truncated", "deep", "huge-int", "list", "null"],
)
def test_unparsable_card_is_config_error(tmp_path, text):
    (tmp_path / "h.json").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_card(tmp_path / "h")
    assert str(info.value).startswith(str(tmp_path / "h.json")) and "\n" not in str(info.value)


def test_oversize_card_file_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "MAX_CARD_BYTES", 1000)
    card = _golden("mlp")
    card["metrics"] = {"note": "x" * 2000}
    (tmp_path / "h.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ConfigError, match="too large for a head card"):
        read_card(tmp_path / "h")


# ----------------------------------------------------------------------------- good cards


@pytest.mark.parametrize("name", ["mlp", "temporal", "temporal_causal"])
def test_old_format_card_loads_unchanged(tmp_path, name):
    data = _golden(name)
    weights = _checkpoint(tmp_path, name, data)
    head, sha = load_head_checkpoint(weights)
    committed, committed_sha = load_head_checkpoint(GOLDEN / name)
    assert sha == committed_sha
    assert json.loads(head.card.to_json()) == data  # the card is kept exactly as stored
    assert head.card == committed.card
    gen = torch.Generator().manual_seed(0)
    shape = (2, 24, 64) if head.card.windowed else (10, 64)
    x = torch.randn(*shape, generator=gen)
    with torch.inference_mode():
        a, b = head(x), committed(x)
    for field in ("va", "expr_logits", "au_logits"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def test_golden_cards_give_the_expected_dims():
    assert MLPDims.from_config(_golden("mlp")["config"], "mlp.json") == MLPDims(width=16, dropout=0.1, hidden_layers=3)
    expected = TemporalDims(d_model=32, tcn_dilations=(1, 2, 4, 8), kernel_size=3, n_layers=1, n_heads=2, dropout=0.1)
    for name in ("temporal", "temporal_causal"):
        config = _golden(name)["config"]
        assert TemporalDims.from_config(config, f"{name}.json") == expected
        assert expected.to_config() == config


def test_dims_round_trip_through_config():
    for dims in (MLPDims(), MLPDims(width=8, dropout=0, hidden_layers=1), MLPDims(16384, 0.999, 64)):
        config = dims.to_config()
        assert json.loads(json.dumps(config)) == config
        assert MLPDims.from_config(config, "card") == dims
        assert isinstance(dims.dropout, float)
    for dims in (TemporalDims(), TemporalDims(64, (1,), 1, 1, 1, 0.0), TemporalDims(32, (), 31, 3, 32, 0.5)):
        config = json.loads(json.dumps(dims.to_config()))
        assert config["positional_encoding"] == "sinusoidal"
        assert TemporalDims.from_config(config, "card") == dims
    # extra keys are not dims; old MLP cards without a key take its default
    assert MLPDims.from_config({"width": 8, "training": {"lr": 1e-3}, "lr": 0.1}, "card") == MLPDims(width=8)
    assert MLPDims.from_config({}, "card") == MLPDims()
    assert TemporalDims(tcn_dilations=[1, 2]).tcn_dilations == (1, 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="MLPDims: width"):
        MLPDims(width=0)
    with pytest.raises(ConfigError, match="TemporalDims: d_model"):
        TemporalDims(d_model=30, n_heads=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        MLPDims().width = 3  # type: ignore[misc]


def test_heads_build_from_dims_or_keywords_alike():
    torch.manual_seed(0)
    a = MLPHead(32, ("va",), width=8, dropout=0.1, hidden_layers=2)
    torch.manual_seed(0)
    b = MLPHead(32, ("va",), dims=MLPDims(width=8, dropout=0.1, hidden_layers=2))
    assert a.card == b.card and a.dims == b.dims
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    dims = TemporalDims(d_model=16, tcn_dilations=(1, 2), n_layers=1, n_heads=2, dropout=0.0)
    t1 = TemporalHead(8, ("expr",), dims=dims)
    t2 = TemporalHead(8, ("expr",), d_model=16, tcn_dilations=(1, 2), n_layers=1, n_heads=2, dropout=0.0)
    assert t1.card == t2.card and t1.dims == dims
    with pytest.raises(TypeError):
        MLPHead(32, ("va",), width=8, dims=MLPDims())
    with pytest.raises(TypeError):
        TemporalHead(8, ("va",), d_model=16, dims=dims)


def test_extra_training_keys_in_config_round_trip(tmp_path):
    torch.manual_seed(0)
    head = MLPHead(32, ("expr", "au"), width=8, dropout=0.2, backbone="test-arch:random", meaningful=False).eval()
    training = {"task": "all", "head": "mlp", "epochs": 2, "lr": 1e-3, "loss": "cvar", "sam": True, "width": 8,
                "d_model": None, "window_length": None, "causal": None}
    head.card = dataclasses.replace(head.card, config={**head.card.config, "training": training, "note": [1, 2]},
                                    au_thresholds=(0.25,) * 12, metrics={"au_f1": float("nan"), "epoch": 2})
    save_head(head, tmp_path / "trained")
    loaded, _ = load_head_checkpoint(tmp_path / "trained")
    assert loaded.card.config == {"width": 8, "dropout": 0.2, "hidden_layers": 3, "training": training, "note": [1, 2]}
    assert loaded.card.au_thresholds == (0.25,) * 12 and math.isnan(loaded.card.metrics["au_f1"])
    assert loaded.dims == MLPDims(width=8, dropout=0.2)
    x = torch.randn(5, 32)
    assert torch.equal(loaded(x).au_logits, head(x).au_logits)

    torch.manual_seed(0)
    temporal = TemporalHead(16, ("va",), d_model=16, tcn_dilations=(1,), n_layers=1, n_heads=2,
                            window_length=8, window_stride=4).eval()
    temporal.card = dataclasses.replace(temporal.card, config={**temporal.card.config, "training": training})
    save_head(temporal, tmp_path / "temporal")
    reloaded, _ = load_head_checkpoint(tmp_path / "temporal")
    assert reloaded.card == temporal.card
    assert reloaded.card.config["positional_encoding"] == "sinusoidal"
    assert reloaded.card.config["training"] == training


# ----------------------------------------------------------------------------- weights files


def _safetensors(path: Path, header: dict[str, Any], data: bytes, length: int | None = None) -> Path:
    raw = json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _refuses(path: Path, match: str) -> None:
    with pytest.raises(WeightsError, match=match) as info:
        check_safetensors(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_committed_weights_pass_the_header_check():
    for name in ("mlp", "temporal", "temporal_causal"):
        check_safetensors(GOLDEN / f"{name}.safetensors")


def test_truncated_weights_are_refused_before_loading(tmp_path, monkeypatch):
    weights = _checkpoint(tmp_path, "mlp", _golden("mlp"))
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-100])
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("load_file was called"))
    with pytest.raises(WeightsError, match="truncated"):
        load_head_checkpoint(weights)
    weights.write_bytes(blob[:5])
    with pytest.raises(WeightsError, match="shorter than its header"):
        load_head_checkpoint(weights)
    weights.write_bytes(blob + b"\0" * 64)
    with pytest.raises(WeightsError, match="padded"):
        load_head_checkpoint(weights)


def test_oversize_weights_are_refused_before_loading(tmp_path, monkeypatch):
    weights = _checkpoint(tmp_path, "mlp", _golden("mlp"))
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("load_file was called"))
    monkeypatch.setattr(base, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(WeightsError, match="bytes of tensors is too large for a head"):
        load_head_checkpoint(weights)  # the file fits the bound on its size; its tensors do not
    monkeypatch.setattr(base, "MAX_HEADER_BYTES", 100)
    with pytest.raises(WeightsError, match="too large for head weights"):
        load_head_checkpoint(weights)  # refused on its size alone, before reading a byte
    monkeypatch.undo()
    monkeypatch.setattr(base, "MAX_TENSORS", 3)
    with pytest.raises(WeightsError, match="too many"):
        load_head_checkpoint(weights)


def test_odd_headers_are_refused(tmp_path):
    f32 = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    _safetensors(tmp_path / "ok.safetensors", {"w": f32, "__metadata__": {"a": "b"}}, b"\0" * 24)
    check_safetensors(tmp_path / "ok.safetensors")
    cases = [
        ({"w": f32}, b"\0" * 24, 10**12, "header of"),
        ({"w": f32}, b"\0" * 24, 2**63, "header of"),
        ({"w": {**f32, "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}}, b"\0" * 24, None,
         "too large for a head"),
        ({"w": {**f32, "shape": [10, 10], "data_offsets": [0, 400]}}, b"\0" * 24, None, "truncated"),
        ({"w": {**f32, "shape": [100000, 100000]}}, b"\0" * 24, None, "needs"),
        ({"w": {**f32, "dtype": "F8_E4M3"}}, b"\0" * 24, None, "dtype"),
        ({"w": {**f32, "dtype": None}}, b"\0" * 24, None, "dtype"),
        ({"w": {**f32, "shape": [2, -3]}}, b"\0" * 24, None, "shape"),
        ({"w": {**f32, "shape": "2x3"}}, b"\0" * 24, None, "shape"),
        ({"w": {**f32, "shape": [1] * 9}}, b"\0" * 24, None, "shape"),
        ({"w": {**f32, "data_offsets": [0]}}, b"\0" * 24, None, "data_offsets"),
        ({"w": {**f32, "data_offsets": [24, 0]}}, b"\0" * 24, None, "needs"),
        ({"w": {**f32, "data_offsets": [8, 32]}}, b"\0" * 32, None, "starts at byte 8"),
        ({"w": f32, "v": f32}, b"\0" * 24, None, "starts at byte 0, expected 24"),
        ({"w": [1, 2]}, b"\0" * 24, None, "not a JSON object"),
    ]
    for i, (header, data, length, match) in enumerate(cases):
        _refuses(_safetensors(tmp_path / f"bad{i}.safetensors", header, data, length), match)
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\0" * 8)
    _refuses(tmp_path / "junk.safetensors", "not valid JSON")
    _safetensors(tmp_path / "list.safetensors", [], b"")  # type: ignore[arg-type]
    _refuses(tmp_path / "list.safetensors", "not a JSON object")


def test_card_for_other_weights_is_still_weights_error(tmp_path):
    card = copy.deepcopy(_golden("mlp"))
    card["config"]["width"] = 32
    with pytest.raises(WeightsError, match="do not match"):
        load_head_checkpoint(_checkpoint(tmp_path, "mlp", card))
