"""``affstream doctor``: what a bug report needs, from the installation itself."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import av
import pytest

from affstream.doctor import CORE, collect
from affstream.version import __version__


def _doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affstream", "doctor", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_doctor_reports_the_installed_versions():
    done = _doctor()
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert ["version", __version__] in [line.split() for line in text.splitlines()]
    for name in ("av", "numpy", "click", "rich", "safetensors", "pillow"):
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert line.split()[-1] == importlib.metadata.version(name), line
    assert f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" in text
    ffmpeg = next(line for line in text.splitlines() if line.strip().startswith("ffmpeg"))
    assert "libavcodec" in ffmpeg and ".".join(map(str, av.library_versions["libavcodec"])) in ffmpeg
    assert "hw decoders" in text and "affstream cache" in text and "hugging face cache" in text


def test_doctor_json_has_every_section():
    done = _doctor("--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"affstream", "system", "packages", "extras", "torch", "pyav", "weights"} <= set(report)
    assert set(CORE) <= set(report["packages"])
    assert report["packages"]["av"] == importlib.metadata.version("av")


def test_doctor_follows_the_cache_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFSTREAM_CACHE", str(tmp_path / "aff"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai").mkdir(parents=True)
    weights = collect().to_dict()["weights"]
    assert weights["affstream cache"] == str(tmp_path / "aff")
    assert weights["hugging face cache"] == str(tmp_path / "hub")
    assert weights["cached models"] == "timm/vit_base_patch32_clip_224.openai"


def test_doctor_without_torch_is_torch_free(tmp_path):
    """torch (and what needs it) hidden from the interpreter: doctor still reports, says
    torch is missing, and never imports it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        HIDDEN = ("torch", "torchvision", "open_clip")

        class _Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, _Hide())
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", "import sys; from affstream.cli import run; "
                           "sys.argv = ['affstream', 'doctor']; "
                           "import atexit; atexit.register(lambda: print('TORCH-IMPORTED' if 'torch' in sys.modules "
                           "else 'torch-free', file=sys.stderr)); run()"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "not installed: annotate/stream/train need it" in done.stdout
    assert "torch-free" in done.stderr and "TORCH-IMPORTED" not in done.stderr


@pytest.mark.parametrize("broken", ["library_versions"])
def test_a_broken_probe_is_a_finding_not_a_crash(monkeypatch, broken):
    class Exploding(dict):
        def items(self):
            raise RuntimeError("boom")

    monkeypatch.setattr(av, broken, Exploding(libavcodec=(1, 2, 3)))
    pyav = collect().to_dict()["pyav"]
    assert pyav["ffmpeg"].startswith("error: RuntimeError: boom")
