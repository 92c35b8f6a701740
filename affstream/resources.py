"""Where the package's shipped data lives (presets, MTCNN weights, prompts).

A wheel carries ``pipelines/`` and ``weights/`` under ``affstream/_data/``; an editable
install or a source checkout reads them from the repository root. Nothing here does
work at import time.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """Directory of shipped data ``name`` ("pipelines" or "weights").

    Raises FileNotFoundError if the installation is incomplete.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"affstream's shipped '{name}' directory is missing; reinstall affstream"
    )


def cache_dir() -> Path:
    """Per-user cache for downloaded or derived artefacts ($XDG_CACHE_HOME/affstream).

    ``AFFSTREAM_CACHE`` overrides the location. The directory is created on demand;
    ConfigError if it cannot be.
    """
    import os

    from .errors import ConfigError

    root = os.environ.get("AFFSTREAM_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "affstream"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot use cache directory {path} ({exc.strerror or exc}); "
            "set AFFSTREAM_CACHE to a writable directory"
        ) from None
    return path
