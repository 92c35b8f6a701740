"""``affstream doctor``: the installation as a bug report needs it (stdout)."""

from __future__ import annotations

import click


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def doctor_command(as_json: bool) -> None:
    """Print the versions of Python, affstream and its dependencies, torch's CUDA and
    devices, PyAV's FFmpeg and hardware decoders, the optional extras and the weights
    caches. Paste it into every bug report."""
    from ..doctor import collect

    diagnosis = collect()
    if as_json:
        import json

        click.echo(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        click.echo(diagnosis.to_text())
