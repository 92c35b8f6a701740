"""Every script in examples/ runs (on small inputs, CPU, no downloads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from synth_affwild import make_feature_bank

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str, tmp_path: Path) -> str:
    env = {"AFFSTREAM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    import os

    env = {**os.environ, **env}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_examples_are_all_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["annotate_video.py", "train_head_on_bank.py"]


def test_annotate_video_example(tmp_path):
    out = run("annotate_video.py", "--device", "cpu", tmp_path=tmp_path)
    assert "72 frames, 72 with a face, 1 track(s)" in out
    assert "meaningless" in out


def test_train_head_on_bank_example(tmp_path):
    bank = make_feature_bank(tmp_path / "bank", n_people=6, frames=(60, 120), dim=16)
    out = run("train_head_on_bank.py", str(bank), "--task", "expr", "--epochs", "2", "--out", str(tmp_path / "h"),
              tmp_path=tmp_path)
    assert '"expr_f1"' in out
    assert (tmp_path / "h.safetensors").is_file() and (tmp_path / "h.json").is_file()
