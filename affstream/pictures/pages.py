"""What every affstream HTML page shares: its shipped assets and data embedded for its
script. The report pages and the live preview both build on these (one copy each)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def asset(name: str) -> str:
    """The text of a shipped asset (``report.css``, ``report.js``, ``preview.js``...)."""
    return resources.files(__package__).joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside ``<script type="application/json">`` (or a
    script literal) whatever strings it holds: every ``<`` is written ``\\u003c``, so
    neither ``</script>`` nor ``<!--`` (the HTML parser's script-data escape, which would
    hide a later ``</script>``) can appear, and the text stays valid JSON for
    ``JSON.parse``. Non-finite numbers are refused (ValueError), as JSON has none."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c")
