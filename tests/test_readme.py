"""The README documents every CSV column, in the writer's order, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from affstream.cli import main
from affstream.writers.columns import CSV_COLUMNS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_readme_column_table_matches_the_writer():
    section = README.split("### CSV", 1)[1].split("### JSON report", 1)[0]
    documented = re.findall(r"^\| `([A-Za-z0-9_]+)` \|", section, flags=re.M)
    assert tuple(documented) == CSV_COLUMNS


def test_readme_commands_are_real_subcommands():
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S))
    used = set(re.findall(r"^affstream ([a-z-]+)", blocks, flags=re.M))
    assert used >= {"annotate", "features", "train", "evaluate", "export-abaw"}
    for command in used:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, command


def test_readme_test_command_is_the_ci_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci


def test_readme_python_example_runs_and_agrees_with_the_csv(tmp_path, monkeypatch, capsys):
    """The README's first Python example, run as written (from the repository root): the
    expression it prints is the name the CSV writes, not an index."""
    import csv

    from affstream.api import annotate_to_files

    root = Path(__file__).resolve().parent.parent
    example = re.search(r"```python\n(import affstream\n.*?)```", README, flags=re.S).group(1)
    monkeypatch.chdir(root)
    exec(compile(example, "README.md", "exec"), {})
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    rows = [line for line in printed if len(line) == 5 and line[0].isdigit()]
    assert len(rows) == 72
    annotate_to_files(root / "tests" / "data" / "single_face.mp4", tmp_path, pipeline="smoke")
    with (tmp_path / "single_face.csv").open(newline="") as handle:
        written = [(row["frame"], row["expression"]) for row in csv.DictReader(handle)]
    assert [(row[0], row[4]) for row in rows] == written
