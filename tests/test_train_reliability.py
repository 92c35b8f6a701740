"""The training commands on outputs that cannot be written, and on Ctrl-C.

Every unwritable output is one ``error:`` line naming the path, no traceback and
nothing written: exit 2 when it is found before any work (a path under a regular file,
a read-only file system, a folder without write permission), exit 1 when a write fails
after the work (a file system remounted read-only mid-run). Ctrl-C is one
``interrupted:`` line and exit 130, also while models load.

Tests run as root here, where permission bits do not stop writes: a path under a
regular file (ENOTDIR) and a tmpfs mounted read-only (EROFS, skipped where mounting is
not permitted) stand in for them; the chmod 0o500 case runs only as non-root.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from synth_affwild import make_affwild_root, make_feature_bank

from affstream.cli import main
from affstream.errors import OutputError
from affstream.files import PARTIAL_TAG
from affstream.heads.base import read_card, save_head
from affstream.heads.mlp import MLPHead
from affstream.train.bank import FeatureBank

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "affstream-tiny:random"
TASKS = ("expr", "au", "va")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    return make_feature_bank(tmp_path_factory.mktemp("bank") / "bank", n_people=5, frames=(40, 60), dim=16, seed=2)


@pytest.fixture(scope="module")
def head_template(bank_path, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("head") / "head"
    save_head(MLPHead(16, TASKS, width=8, dropout=0.1, backbone=FeatureBank.open(bank_path).backbone).eval(), path)
    return path


@pytest.fixture()
def head(head_template, tmp_path):
    """A fresh copy of the head (tests may rewrite its card)."""
    target = tmp_path / "heads" / "head"
    target.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        target.with_suffix(suffix).write_bytes(head_template.with_suffix(suffix).read_bytes())
    return target


@pytest.fixture(scope="module")
def affwild_root(tmp_path_factory):
    return make_affwild_root(tmp_path_factory.mktemp("affwild") / "root", n_people=3, frames=10, seed=1)


def _mount(folder, options):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")


def _umount(folder):
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@pytest.fixture()
def ro_mount(tmp_path):
    """A folder on a tmpfs mounted read-only (EROFS on any write)."""
    folder = tmp_path / "ro"
    _mount(folder, "ro,size=1m")
    yield folder
    _umount(folder)


@pytest.fixture()
def rw_mount(tmp_path):
    """(folder on a writable tmpfs, remount_ro()): make it read-only in the middle of a run."""
    folder = tmp_path / "rw"
    _mount(folder, "size=16m")

    def remount_ro():
        done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, check=False)
        assert done.returncode == 0, done.stderr

    yield folder, remount_ro
    _umount(folder)


@pytest.fixture(params=["under_a_file", "read_only_mount", "chmod_0o500"])
def blocked(request, tmp_path):
    """A folder path no command can write in, and what must stay as it is."""
    if request.param == "under_a_file":
        afile = tmp_path / "afile"
        afile.write_text("a regular file\n")
        yield afile / "out"
        return
    if request.param == "read_only_mount":
        yield request.getfixturevalue("ro_mount") / "out"
        return
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    yield folder / "out"
    folder.chmod(0o700)


def _snapshot(folder):
    """Every path under the nearest existing ancestor of ``folder`` (to see that nothing appeared)."""
    base = folder
    while not base.exists():
        base = base.parent
    if base.is_file():
        return {str(base): base.read_bytes()}
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(base.rglob("*"))}


def _error_line(result, *, code):
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # never a raw exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines
    return lines[0]


def _interrupted_line(result):
    assert result.exit_code == 130, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted:"), result.stderr
    return lines[0]


def _no_partials(folder):
    return not [p for p in folder.rglob("*") if PARTIAL_TAG in p.name or ".tmp-" in p.name]


def _train_args(bank_path, out, *extra):
    return ["train", "--features", str(bank_path), "--task", "all", "--head", "mlp", "-o", str(out), "--epochs", "2",
            "--width", "8", "--dropout", "0.1", "--batch-size", "16", "--device", "cpu", *extra]


# --------------------------------------------------------------------------- unwritable before work: exit 2


def test_features_refuses_an_unwritable_output_before_loading_the_backbone(affwild_root, blocked, monkeypatch):
    before = _snapshot(blocked)
    monkeypatch.setattr("affstream.embed.backbone.load_backbone",
                        lambda *a, **k: pytest.fail("backbone loaded for an unwritable output"))
    result = CliRunner().invoke(main, ["features", str(affwild_root), "-o", str(blocked), "--backbone", TINY,
                                       "--device", "cpu"])
    line = _error_line(result, code=2)
    assert str(blocked) in line and ("folder" in line or "file system" in line)
    assert _snapshot(blocked) == before


def test_train_refuses_an_unwritable_output_before_training(bank_path, blocked):
    before = _snapshot(blocked)
    result = CliRunner().invoke(main, _train_args(bank_path, blocked / "head"))
    line = _error_line(result, code=2)
    assert str(blocked) in line
    assert "epoch" not in result.stderr.replace(line, "")
    assert _snapshot(blocked) == before


def test_export_refuses_an_unwritable_output_before_predicting(bank_path, head, blocked):
    before = _snapshot(blocked)
    result = CliRunner().invoke(main, ["export-abaw", "--features", str(bank_path), "--head", str(head),
                                       "-o", str(blocked), "--device", "cpu"])
    line = _error_line(result, code=2)
    assert str(blocked) in line
    assert _snapshot(blocked) == before


def test_tune_thresholds_refuses_an_unwritable_card_before_scoring(bank_path, head, ro_mount, monkeypatch):
    # the head itself lives on a read-only file system: it can be read, not re-carded
    ro_head = ro_mount / "head"
    subprocess.run(["mount", "-o", "remount,rw", str(ro_mount)], check=True)
    for suffix in (".safetensors", ".json"):
        ro_head.with_suffix(suffix).write_bytes(head.with_suffix(suffix).read_bytes())
    subprocess.run(["mount", "-o", "remount,ro", str(ro_mount)], check=True)
    card = ro_head.with_suffix(".json").read_bytes()
    import affstream.train.evaluate as evaluate

    original = evaluate.predict_people
    monkeypatch.setattr(evaluate, "predict_people", lambda *a, **k: pytest.fail("scored for a card that cannot be written"))
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(ro_head),
                                       "--tune-thresholds", "--device", "cpu"])
    line = _error_line(result, code=2)
    assert str(ro_mount) in line and "read-only file system" in line
    assert result.stdout == "" and ro_head.with_suffix(".json").read_bytes() == card
    monkeypatch.setattr(evaluate, "predict_people", original)
    # without --tune-thresholds nothing is written, so a read-only head evaluates fine
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(ro_head),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "au_f1" in json.loads(result.stdout)


def test_tune_thresholds_refuses_a_card_under_a_file(bank_path, head, tmp_path):
    # a card path that is a folder cannot be replaced by a file
    (tmp_path / "odd").mkdir()
    for suffix in (".safetensors",):
        (tmp_path / "odd" / f"h{suffix}").write_bytes(head.with_suffix(suffix).read_bytes())
    (tmp_path / "odd" / "h.json").mkdir()
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(tmp_path / "odd" / "h"),
                                       "--tune-thresholds", "--device", "cpu"])
    line = _error_line(result, code=2)
    assert "h.json: is a folder" in line


@pytest.fixture()
def locked_world(bank_path, head_template, affwild_root):
    """(folder 0o500 beside copies of the inputs, all in a 0o755 folder under /tmp,
    run(args) as user nobody): as root, permission bits only bind another user."""
    import shutil
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import affstream.cli, torch"], capture_output=True, text=True, check=False, timeout=120)
    if probe.returncode != 0:  # e.g. the checkout lies in a private (0700) folder such as mktemp -d's
        pytest.skip("user nobody cannot import affstream and torch from this checkout and venv: "
                    + (probe.stderr.strip().splitlines() or ["?"])[-1])
    top = tempfile.mkdtemp(prefix="affstream-locked-", dir="/tmp")
    os.chmod(top, 0o755)
    locked = os.path.join(top, "locked")
    os.mkdir(locked, 0o500)
    os.chmod(locked, 0o500)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__import__("affstream").__file__)))
    cache = os.path.join(top, "cache")
    os.mkdir(cache)
    os.chmod(cache, 0o777)
    inputs = Path(top) / "inputs"
    shutil.copytree(bank_path, inputs / "bank")
    shutil.copytree(affwild_root, inputs / "root")
    for suffix in (".safetensors", ".json"):
        shutil.copy(head_template.with_suffix(suffix), (inputs / "head").with_suffix(suffix))
    for folder, _, files in os.walk(inputs):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)

    def run(args):
        env = {**os.environ, "PYTHONPATH": repo, "AFFSTREAM_CACHE": cache, "HOME": top, "COLUMNS": "500"}
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-m", "affstream", *args], capture_output=True, text=True, env=env, check=False,
                              timeout=300)

    yield Path(locked), inputs, run
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("command", ["features", "train", "evaluate", "export-abaw"])
def test_a_folder_without_write_permission(command, locked_world):
    locked, inputs, run = locked_world
    out = locked / "out"
    bank, head = str(inputs / "bank"), str(inputs / "head")
    if command == "evaluate":  # a head in a folder its user cannot write: the card cannot be re-written
        for suffix in (".safetensors", ".json"):
            (locked / "head").with_suffix(suffix).write_bytes((inputs / "head").with_suffix(suffix).read_bytes())
    before = sorted(os.listdir(locked))
    args = {
        "features": ["features", str(inputs / "root"), "-o", str(out), "--backbone", TINY, "--device", "cpu"],
        "train": ["train", "--features", bank, "--task", "expr", "-o", str(out / "head"), "--epochs", "1",
                  "--width", "8", "--device", "cpu"],
        "evaluate": ["evaluate", "--features", bank, "--head", str(locked / "head"), "--tune-thresholds",
                     "--device", "cpu"],
        "export-abaw": ["export-abaw", "--features", bank, "--head", head, "-o", str(out), "--device", "cpu"],
    }[command]
    done = run(args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and str(locked) in lines[0] and "permission denied" in lines[0]
    assert done.stdout == "" and sorted(os.listdir(locked)) == before


def test_train_refuses_a_checkpoint_name_that_is_a_folder(bank_path, tmp_path):
    (tmp_path / "head.safetensors").mkdir()
    result = CliRunner().invoke(main, _train_args(bank_path, tmp_path / "head"))
    line = _error_line(result, code=2)
    assert f"{tmp_path / 'head.safetensors'}: is a folder" in line
    assert not (tmp_path / "head.resume").exists() and not (tmp_path / "head.json").exists()


# --------------------------------------------------------------------------- a write failing after the work: exit 1


def test_features_stops_with_one_line_when_the_bank_becomes_unwritable(affwild_root, rw_mount, monkeypatch):
    folder, remount_ro = rw_mount
    out = folder / "bank"
    from affstream.train.bank import BankWriter

    original, calls = BankWriter.add, []

    def add(self, *args, **kwargs):
        calls.append(args[0].name)
        if len(calls) == 2:
            remount_ro()  # e.g. a disk remounted read-only after an error, while a person is embedded
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BankWriter, "add", add)
    result = CliRunner().invoke(main, ["features", str(affwild_root), "-o", str(out), "--backbone", TINY,
                                       "--device", "cpu", "--batch-size", "8"])
    line = _error_line(result, code=1)
    assert str(out) in line and "read-only file system" in line and "people already written are kept" in line
    assert len(calls) == 2  # stopped at the first failed write, not one failure per person
    bank = FeatureBank.open(out)
    assert list(bank.people) == [calls[0]] and _no_partials(out)


def test_train_stops_with_one_line_when_an_epoch_cannot_be_saved(bank_path, rw_mount, monkeypatch):
    folder, remount_ro = rw_mount
    out = folder / "head"
    import affstream.train.loop as loop

    original, calls = loop.save_resume, []

    def save_resume(path, state):
        calls.append(state.epoch)
        if state.epoch == 2:
            remount_ro()
        return original(path, state)

    monkeypatch.setattr(loop, "save_resume", save_resume)
    result = CliRunner().invoke(main, _train_args(bank_path, out))
    assert "epoch 1/2" in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert "read-only file system" in lines[0] and "training stopped after epoch 2" in lines[0]
    assert f"epoch 1 is kept in {folder / 'head.resume'}" in lines[0]
    assert not out.with_suffix(".safetensors").exists() and _no_partials(folder)


def test_train_keeps_the_last_epoch_when_the_head_cannot_be_written(bank_path, rw_mount, monkeypatch):
    folder, remount_ro = rw_mount
    out = folder / "head"
    import affstream.train.loop as loop

    original = loop.save_head

    def save_head_then_fail(model, path):
        remount_ro()
        return original(model, path)

    monkeypatch.setattr(loop, "save_head", save_head_then_fail)
    result = CliRunner().invoke(main, _train_args(bank_path, out))
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1 and isinstance(result.exception, SystemExit)
    assert str(out.with_suffix(".safetensors")) in lines[0] and "--resume" in lines[0]
    assert not out.with_suffix(".safetensors").exists() and _no_partials(folder)
    # once writable again, --resume writes the head without training again
    subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
    monkeypatch.setattr(loop, "save_head", original)
    again = CliRunner().invoke(main, _train_args(bank_path, out, "--resume"))
    assert again.exit_code == 0, again.output
    assert "epoch 1/2" not in again.stderr and "best epoch" in again.stderr
    assert read_card(out).tasks == TASKS and not (folder / "head.resume").exists()


def test_evaluate_prints_its_metrics_before_failing_on_the_card(bank_path, head, monkeypatch):
    import affstream.train.evaluate as evaluate

    def refuse(path, text, **kwargs):
        raise OutputError(f"{path}: cannot write the file: no space left on the device; free space")

    card = head.with_suffix(".json").read_bytes()
    monkeypatch.setattr(evaluate, "atomic_write_text", refuse)
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(head),
                                       "--tune-thresholds", "--device", "cpu"])
    line = _error_line(result, code=1)
    assert str(head.with_suffix(".json")) in line and "no space left" in line and "not stored" in line
    data = json.loads(result.stdout)  # the metrics computed are not lost
    assert {"expr_f1", "au_f1", "va_ccc", "au_thresholds"} <= set(data)
    assert data["au_thresholds_tuned_on"] == "Train_Set"
    assert head.with_suffix(".json").read_bytes() == card


def test_evaluate_prints_its_metrics_when_the_card_folder_turns_read_only(bank_path, head, rw_mount, monkeypatch):
    folder, remount_ro = rw_mount
    target = folder / "head"
    for suffix in (".safetensors", ".json"):
        target.with_suffix(suffix).write_bytes(head.with_suffix(suffix).read_bytes())
    import affstream.train.evaluate as evaluate

    original = evaluate.score_head

    def score_then_remount(*args, **kwargs):
        result = original(*args, **kwargs)
        remount_ro()
        return result

    monkeypatch.setattr(evaluate, "score_head", score_then_remount)
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(target),
                                       "--tune-thresholds", "--device", "cpu"])
    line = _error_line(result, code=1)
    assert str(target.with_suffix(".json")) in line and "read-only file system" in line
    assert "au_f1" in json.loads(result.stdout)
    assert read_card(target).metrics.get("au_thresholds_tuned_on") is None and _no_partials(folder)


def test_export_fails_with_one_line_and_no_file_when_the_folder_turns_read_only(bank_path, head, rw_mount, monkeypatch):
    folder, remount_ro = rw_mount
    out = folder / "sub"
    import affstream.train.export as export

    original = export._write_all

    def remount_then_write(out_dir, lines):
        remount_ro()
        return original(out_dir, lines)

    monkeypatch.setattr(export, "_write_all", remount_then_write)
    result = CliRunner().invoke(main, ["export-abaw", "--features", str(bank_path), "--head", str(head),
                                       "-o", str(out), "--device", "cpu"])
    line = _error_line(result, code=1)
    assert str(folder) in line and "read-only file system" in line
    assert not out.exists()


def test_export_publishes_no_file_unless_all_can_be_written(tmp_path):
    from affstream.train.export import _write_all

    out = tmp_path / "sub"
    out.mkdir()
    (out / "AU.txt").mkdir()  # the second file cannot be created
    with pytest.raises(OutputError, match=r"AU\.txt"):
        _write_all(out, {"expr": ["image_location,Neutral", "a/00001.jpg,0"], "au": ["image_location,AU1"]})
    assert sorted(p.name for p in out.iterdir()) == ["AU.txt"]


def test_library_calls_raise_output_error_for_a_path_under_a_file(bank_path, head, affwild_root, tmp_path):
    from affstream.train.evaluate import evaluate_head
    from affstream.train.export import export_abaw
    from affstream.train.features import build_feature_bank
    from affstream.train.loop import train_head

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"'.*afile' is a file, not a folder"):
        build_feature_bank(affwild_root, afile / "bank", backbone=TINY, device="cpu")
    with pytest.raises(OutputError, match="afile"):
        train_head(bank_path, task="expr", out=afile / "head", epochs=1, device="cpu")
    with pytest.raises(OutputError, match="afile"):
        export_abaw(bank_path, head, afile / "sub", device="cpu")
    # a card that is a folder: refused before scoring
    (tmp_path / "h.json").mkdir()
    (tmp_path / "h.safetensors").write_bytes(head.with_suffix(".safetensors").read_bytes())
    with pytest.raises(OutputError, match=r"h\.json: is a folder"):
        evaluate_head(bank_path, tmp_path / "h", tune_thresholds=True, device="cpu")


# --------------------------------------------------------------------------- Ctrl-C: exit 130


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_the_backbone_loads(affwild_root, tmp_path, monkeypatch):
    monkeypatch.setattr("affstream.embed.backbone.load_backbone", _interrupt)
    result = CliRunner().invoke(main, ["features", str(affwild_root), "-o", str(tmp_path / "bank"),
                                       "--backbone", TINY, "--device", "cpu"])
    assert "resume" in _interrupted_line(result)
    assert not (tmp_path / "bank").exists()


def test_ctrl_c_while_the_train_model_is_built(bank_path, tmp_path, monkeypatch):
    monkeypatch.setattr("affstream.train.loop.build_model", _interrupt)
    result = CliRunner().invoke(main, _train_args(bank_path, tmp_path / "head"))
    assert "nothing was written" in _interrupted_line(result)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_training_keeps_the_last_epoch(bank_path, tmp_path, monkeypatch):
    import affstream.train.loop as loop

    original = loop._train_epoch

    def second_epoch_interrupted(run, epoch, step, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(run, epoch, step, progress)

    monkeypatch.setattr(loop, "_train_epoch", second_epoch_interrupted)
    result = CliRunner().invoke(main, _train_args(bank_path, tmp_path / "head"))
    assert result.exit_code == 130 and "add --resume" in result.stderr.splitlines()[-1]
    assert (tmp_path / "head.resume" / "state.json").is_file()


@pytest.mark.parametrize("command", ["evaluate", "export-abaw"])
def test_ctrl_c_while_the_head_loads(command, bank_path, head, tmp_path, monkeypatch):
    monkeypatch.setattr("affstream.heads.base.load_head_checkpoint", _interrupt)
    args = [command, "--features", str(bank_path), "--head", str(head), "--device", "cpu"]
    if command == "export-abaw":
        args += ["-o", str(tmp_path / "sub")]
    result = CliRunner().invoke(main, args)
    assert "written" in _interrupted_line(result)
    assert result.stdout == "" and not (tmp_path / "sub").exists()


def test_ctrl_c_while_evaluate_scores(bank_path, head, monkeypatch):
    monkeypatch.setattr("affstream.train.evaluate.pool", _interrupt)
    card = head.with_suffix(".json").read_bytes()
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(head),
                                       "--tune-thresholds", "--device", "cpu"])
    _interrupted_line(result)
    assert head.with_suffix(".json").read_bytes() == card
