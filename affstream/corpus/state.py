"""The outputs are the state: fingerprints in each JSON report, and the manifest.

Input fingerprint: ``{"size", "mtime_ns", "head_sha256", "tail_sha256"}`` (sha256 of
the first and of the last MiB). Configuration fingerprint: sha256 of the canonical JSON
of the effective pipeline configuration (as requested: a worker's own CUDA device is
not part of it), the backbone's identity (spec and weights sha256), the head's identity
(name, kind, sha256, path) and the affstream version. A video is done when its CSV and
JSON exist and the JSON's ``fingerprints`` equal both; ``--resume`` skips exactly those.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError
from ..files import atomic_write_text, same_file, sha256_bytes
from ..version import __version__
from ..writers.csv import text_cell
from .inputs import STATUS_DONE, STATUS_SKIPPED, CorpusItem

EDGE_BYTES = 1 << 20  # bytes hashed at each end of an input

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "size", "status", "error", "frames", "faces", "tracks", "seconds", "csv", "json")
MANIFEST_TEXT_COLUMNS = ("path", "error", "csv", "json")  # names and messages: written with writers.csv.text_cell


def input_fingerprint(path: str | Path) -> dict[str, Any]:
    """Size, mtime_ns and sha256 of the first and last MiB of ``path``."""
    info = os.stat(path)
    with open(path, "rb") as handle:
        head = handle.read(EDGE_BYTES)
        handle.seek(max(0, info.st_size - EDGE_BYTES))
        tail = handle.read(EDGE_BYTES)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns,
            "head_sha256": sha256_bytes(head), "tail_sha256": sha256_bytes(tail)}


def config_fingerprint(config: dict[str, Any], identity: dict[str, Any]) -> str:
    """sha256 of the configuration dict, the models' identities and the version.

    identity: ``{"backbone": Backbone.identity(), "head": Stages.head_identity}``.
    """
    backbone = identity.get("backbone") or {}
    head = identity.get("head") or {}
    payload = {
        "config": config,
        "backbone": {"spec": backbone.get("spec"), "sha256": backbone.get("sha256")},
        "head": {key: head.get(key) for key in ("name", "kind", "sha256", "path")},
        "affstream_version": __version__,
    }
    return sha256_bytes(json.dumps(payload, sort_keys=True, default=str).encode("utf-8"))


def read_report(json_path: Path) -> dict[str, Any] | None:
    """The JSON report at ``json_path``, or None when missing or unreadable."""
    try:
        value = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_report(item: CorpusItem, out_dir: Path, fingerprints: dict[str, Any]) -> dict[str, Any] | None:
    """The report of ``item`` when it is done with exactly these fingerprints, else None."""
    csv_path, json_path = item.outputs(out_dir)
    if not csv_path.is_file():
        return None
    report = read_report(json_path)
    if report is None or report.get("fingerprints") != fingerprints:
        return None
    return report


def manifest_row(item: CorpusItem, out_dir: Path, report: dict[str, Any] | None, seconds: float | None) -> dict:
    """One manifest row (strings), from ``item``'s decision and its report if done."""
    row = {"path": str(item.path), "size": str(item.size), "status": item.status or "", "error": item.error or "",
           "frames": "", "faces": "", "tracks": "", "seconds": "", "csv": "", "json": ""}
    if seconds is not None:
        row["seconds"] = f"{seconds:.3f}"
    if report is not None and item.status in (STATUS_DONE, STATUS_SKIPPED):
        counts = report.get("counts", {})
        row.update(frames=str(counts.get("frames_written", "")), faces=str(counts.get("frames_with_faces", "")),
                   tracks=str(counts.get("tracks", "")))
        if seconds is None:
            row["seconds"] = f"{float(report.get('timings', {}).get('wall_s', 0.0)):.3f}"
        csv_path, json_path = item.outputs(out_dir)
        row["csv"] = csv_path.relative_to(out_dir).as_posix()
        row["json"] = json_path.relative_to(out_dir).as_posix()
    return row


def check_run_outputs(source: Path, videos: list[CorpusItem], out_dir: Path) -> None:
    """Before anything is written: the manifest ``OUT/manifest.csv`` is neither the list of
    inputs nor a file affstream did not write, and no video's outputs are the manifest or
    the list of inputs. ConfigError / OutputError (one line) otherwise."""
    manifest = out_dir / MANIFEST_NAME
    source = Path(source)
    if source.is_file() and os.path.lexists(manifest) and same_file(source, manifest):
        raise ConfigError(f"{manifest}: is the list of inputs, and affstream writes its manifest under that name; "
                          "give another output folder (-o)")
    if os.path.lexists(manifest) and not _is_own_manifest(manifest):
        raise OutputError(f"{manifest}: exists and is not a manifest affstream wrote; move it away or give "
                          "another output folder (-o)")
    for item in videos:
        for output in item.outputs(out_dir):
            if same_file(output, manifest):
                raise ConfigError(f"{item.path}: its output {output} would be the corpus manifest; rename the "
                                  "video or move it into a sub-folder")
            if source.is_file() and same_file(output, source):
                raise ConfigError(f"{item.path}: its output {output} would be the list of inputs {source}; "
                                  "give another output folder (-o)")


def _is_own_manifest(path: Path) -> bool:
    """A regular file whose first line is affstream's manifest header."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return False
    return os.path.isfile(path) and header == ",".join(MANIFEST_COLUMNS)


def write_manifest(out_dir: Path, rows: list[dict]) -> Path:
    """Publish ``OUT/manifest.csv`` atomically (rows in the order given; text cells that a
    spreadsheet would evaluate are written with a leading "'", see ``writers.csv.text_cell``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: text_cell(value) if key in MANIFEST_TEXT_COLUMNS and isinstance(value, str) else value
                      for key, value in row.items()} for row in rows)
    path = out_dir / MANIFEST_NAME
    atomic_write_text(path, buffer.getvalue())
    return path
