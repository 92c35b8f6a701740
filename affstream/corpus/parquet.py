"""One Parquet dataset for a whole corpus: ``OUT/parquet/<rel parent>/<stem>.parquet``.

Each video's Parquet file is converted from the CSV its worker just wrote (in the
corpus process, as the video finishes), so its values are the CSV's exactly: every
cell goes through :func:`~affstream.writers.columns.parse_cell`, the parser
:func:`~affstream.writers.csv.read_csv` uses. Columns: ``video`` (the input's path
relative to the corpus root, as POSIX text), then :data:`~affstream.writers.columns.CSV_COLUMNS`
typed by :data:`~affstream.writers.columns.COLUMN_KINDS`: int64 ``frame`` / ``face_id``,
bool ``success`` and ``AU*_c``, float64 measurements (float64, not float32, so that a
value equals the CSV's printed decimal as Python reads it), string ``expression``;
null where the CSV cell is empty. Files are published atomically
(:func:`affstream.files.atomic_path`).

The CSV and JSON of each video stay: they are the resume state (``--resume`` checks
the CSV and the JSON's fingerprints), so ``--format parquet`` writes the same files as
``--format both``. The Parquet file records the sha256 of the CSV it came from
(schema metadata ``affstream.csv_sha256``); a resumed run converts a skipped video
again only when that differs (a run killed between the CSV and its Parquet file).

pyarrow is imported only here, lazily: ``pip install "affstream[parquet]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_path, sha256_file
from ..writers.columns import COLUMN_KINDS, CSV_COLUMNS, FLAG, FLOAT, INT, LABEL
from ..writers.csv import iter_csv_cells
from .inputs import CorpusItem

PARQUET_DIR = "parquet"
INSTALL_HINT = 'Parquet output needs pyarrow: pip install "affstream[parquet]"'
SHA_KEY = b"affstream.csv_sha256"


def import_pyarrow() -> Any:
    """``pyarrow`` (and ``pyarrow.parquet``), or ConfigError with the install hint."""
    try:
        import pyarrow
        import pyarrow.parquet  # the submodule is what writes files
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return pyarrow


def schema(pa: Any) -> Any:
    types = {INT: pa.int64(), FLAG: pa.bool_(), FLOAT: pa.float64(), LABEL: pa.string()}
    return pa.schema([pa.field("video", pa.string(), nullable=False)]
                     + [pa.field(column, types[COLUMN_KINDS[column]]) for column in CSV_COLUMNS])


def parquet_path(item: CorpusItem, out_dir: Path) -> Path:
    """``OUT/parquet/<rel parent>/<stem>.parquet`` (the CSV's path under ``parquet/``)."""
    csv_path, _ = item.outputs(Path(out_dir))
    return Path(out_dir) / PARQUET_DIR / csv_path.relative_to(out_dir).with_suffix(".parquet")


def _columns(csv_path: Path) -> dict[str, list]:
    """The CSV's cells by column, typed as read_csv types them (DataError if foreign)."""
    columns: dict[str, list] = {column: [] for column in CSV_COLUMNS}
    for _, values in iter_csv_cells(csv_path):
        for column, value in zip(CSV_COLUMNS, values, strict=True):
            columns[column].append(bool(value) if value is not None and COLUMN_KINDS[column] == FLAG else value)
    return columns


def write_video_parquet(item: CorpusItem, out_dir: Path) -> Path:
    """Convert ``item``'s CSV to its Parquet file (atomically); returns its path."""
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    csv_path, _ = item.outputs(out_dir)
    target = parquet_path(item, out_dir)
    sha = sha256_file(csv_path)
    columns = _columns(csv_path)
    rows = len(columns["frame"])
    table = pa.Table.from_pydict({"video": [item.rel.as_posix()] * rows, **columns}, schema=schema(pa))
    table = table.replace_schema_metadata({SHA_KEY: sha.encode("ascii")})
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        pq.write_table(table, str(tmp))
    return target


def parquet_current(item: CorpusItem, out_dir: Path) -> bool:
    """Whether ``item``'s Parquet file exists and came from its current CSV."""
    import pyarrow.parquet as pq

    target = parquet_path(item, out_dir)
    csv_path, _ = item.outputs(Path(out_dir))
    if not target.is_file() or not csv_path.is_file():
        return False
    try:
        metadata = pq.read_schema(str(target)).metadata or {}
    except (OSError, ValueError):
        return False
    return metadata.get(SHA_KEY, b"").decode("ascii", "replace") == sha256_file(csv_path)


def parquet_on_event(out_dir: str | Path, chain: Any = None) -> Any:
    """An ``on_event`` for :func:`~affstream.corpus.run_corpus` that converts each video
    as it finishes (done: always; skipped on resume: when not current), then calls
    ``chain(kind, item, data)`` if given. Checks that pyarrow imports first."""
    from .inputs import STATUS_DONE, STATUS_SKIPPED

    import_pyarrow()
    out_dir = Path(out_dir)

    def on_event(kind: str, item: CorpusItem, data: dict) -> None:
        if kind == "finished" and (item.status == STATUS_DONE
                                   or (item.status == STATUS_SKIPPED and not parquet_current(item, out_dir))):
            write_video_parquet(item, out_dir)
        if chain is not None:
            chain(kind, item, data)

    return on_event
