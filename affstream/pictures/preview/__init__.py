"""``affstream stream --preview``: a local web page with the live video and charts.

    hub.py     what the session hands over (every frame logged, on its thread, O(1)),
               the painter thread (overlay drawn with :mod:`..overlay`, JPEG at most
               10 times a second, newest picture wins) and what the page reads
    server.py  the stdlib HTTP server on 127.0.0.1: the page, Server-Sent Events,
               the newest JPEG; :class:`LivePreview` ties it to a session

The page itself is ``assets/preview.js`` and ``assets/preview.css`` (with the report's
stylesheet), inlined: no library, no network.
"""

from __future__ import annotations

from .hub import PreviewHub
from .server import LivePreview

__all__ = ["LivePreview", "PreviewHub"]
