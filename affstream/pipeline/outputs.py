"""Where a run's outputs go, and the checks made before anything is written.

``OUT/<stem>.csv`` and ``OUT/<stem>.json`` per input; two inputs may not share a stem
in one output folder, and the folder must be creatable. Checked before any model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError


def output_paths(source: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``OUT/<stem>.csv`` and ``OUT/<stem>.json`` for ``source``."""
    stem = Path(source).stem
    out = Path(out_dir)
    return out / f"{stem}.csv", out / f"{stem}.json"


def check_outputs(sources: Sequence[str | Path], out_dir: str | Path) -> None:
    """Fail early (ConfigError) if ``out_dir`` cannot be created or two sources would
    write the same output files."""
    seen: dict[Path, str] = {}
    for source in sources:
        csv_path, _ = output_paths(source, out_dir)
        if csv_path in seen:
            raise ConfigError(
                f"{source} and {seen[csv_path]} would both write {csv_path.name}; "
                "annotate them into different output directories or rename one"
            )
        seen[csv_path] = str(source)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc})") from None
