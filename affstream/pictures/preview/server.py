"""The live preview's web server: stdlib ``http.server`` on 127.0.0.1, in daemon threads.

    preview = LivePreview.start(port=0, source="talk.mp4")   # AffstreamError if the port is taken
    preview.attach(session)            # the session's observer and clock
    print(preview.url)                 # http://127.0.0.1:PORT/?token=SECRET
    ...                                # iterate the session
    preview.close({"text": "..."})     # the page says the session ended, then the server stops

Routes (GET only):

    /            the page: one self-contained HTML document (inline script and style,
                 no network; ``assets/preview.js|css`` with the report's stylesheet)
    /events      Server-Sent Events: ``rows`` (a JSON list of frame records, see
                 :mod:`.hub`), ``stats``, ``frame`` (a new picture: seq, frame, time,
                 size) and ``end``; a page opened mid-session first gets the last 30 s
    /frame.jpg   the newest overlaid picture (JPEG; 404 before the first)
    /state.json  a snapshot for scripts: stats, newest picture, end message or null

Access: the server listens on 127.0.0.1 only and answers only requests whose ``Host`` is
that address or ``localhost`` with its port (a web page elsewhere cannot read it through
DNS rebinding). Every route also needs the session's token, an unguessable string in the
printed URL (as Jupyter does): another local account can reach the port but not the
pictures. The page opened with ``?token=...`` gets it as an HttpOnly, SameSite=Strict
cookie, which its own requests then carry. Without it: 403. A request must arrive within
:data:`REQUEST_TIMEOUT_S`, and at most :data:`MAX_CONNECTIONS` are served at once (more
are closed at once), so idle or half-open connections cannot use up the process's file
descriptors or starve the drawing thread. :meth:`LivePreview.close` waits (a few seconds at most) until every open page
was told the session ended and its last requests were answered, then stops.
"""

from __future__ import annotations

import errno
import hmac
import html
import json
import logging
import secrets
import sys
import threading
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ...errors import AffstreamError
from ...labels import AU_LABELS, EXPR_LABELS
from ..pages import asset, script_json
from ..palette import AROUSAL_COLOUR, EXPR_COLOURS, TRACK_COLOURS, VALENCE_COLOUR
from .hub import MAX_FPS, WINDOW_S, PreviewHub

_LOG = logging.getLogger("affstream")

HOST = "127.0.0.1"
KEEPALIVE_S = 10.0  # an idle event stream sends a comment this often (finds closed pages)
CLOSE_WAIT_S = 3.0  # close() waits at most this long for pages to hear of the end
QUIET_S = 0.5  # ... and until no request was answered for this long
REQUEST_TIMEOUT_S = 10.0  # a connection that sends no complete request this long is closed
MAX_CONNECTIONS = 32  # connections served at once; more are closed on arrival


def page_html(config: dict[str, Any]) -> str:
    """The page: ``config`` (labels, colours, source, warning) as inline JSON for the script."""
    data = script_json(config)
    title = html.escape(f"affstream live · {config.get('source', '')}")
    warning = config.get("warning")
    banner = f'<div class="banner" role="alert">{html.escape(warning)}</div>\n' if warning else ""
    return (
        '<!DOCTYPE html>\n<html lang="en" data-state="connecting">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
        f"<title>{title}</title>\n<style>\n{asset('report.css')}{asset('preview.css')}</style>\n</head>\n"
        '<body>\n<main class="live">\n<header class="live-head">\n'
        f'<h1>affstream live <span class="source">{html.escape(str(config.get("source", "")))}</span></h1>\n'
        '<span id="status" class="status" role="status">connecting</span>\n</header>\n'
        f'{banner}<div id="ended" class="ended" hidden></div>\n'
        '<div class="live-grid">\n<section class="video-col">\n'
        '<div class="video-box"><canvas id="video" width="640" height="360" aria-label="live video with overlay">'
        '</canvas><p id="video-wait" class="video-wait">waiting for the first analysed frame</p></div>\n'
        '<p id="video-caption" class="caption">&nbsp;</p>\n'
        '<div id="stats" class="tiles"></div>\n</section>\n'
        '<section class="faces-col">\n<div id="faces" class="live-faces"></div>\n'
        '<p id="no-face" class="note">No face yet.</p>\n</section>\n</div>\n'
        "<footer>Served by affstream on 127.0.0.1 only; the page needs no network. "
        f"Charts show the last {WINDOW_S:.0f} s; the picture is refreshed at most {MAX_FPS:.0f} times a second."
        "</footer>\n</main>\n"
        f'<script id="affstream-live" type="application/json">{data}</script>\n'
        f"<script>\n{asset('preview.js')}</script>\n</body>\n</html>\n"
    )


def page_config(source: str, warning: str | None) -> dict[str, Any]:
    return {
        "source": source,
        "warning": warning,
        "window_s": WINDOW_S,
        "expr_labels": list(EXPR_LABELS),
        "expr_colours": [EXPR_COLOURS[name] for name in EXPR_LABELS],
        "au_labels": list(AU_LABELS),
        "track_colours": list(TRACK_COLOURS),
        "valence_colour": VALENCE_COLOUR,
        "arousal_colour": AROUSAL_COLOUR,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Linux refuses a port another socket listens on even with SO_REUSEADDR (which then only
    # lets a port in TIME_WAIT be reused); elsewhere SO_REUSEADDR can share a port, so not there
    allow_reuse_address = sys.platform.startswith("linux")
    request_queue_size = 64  # the listen backlog: a burst of connections waits to be accepted (or refused)

    def __init__(self, port: int, hub: PreviewHub, page: bytes, token: str,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.hub = hub
        self.request_timeout_s = request_timeout_s
        self.page = page
        self.token = token
        self.lock = threading.Lock()
        self.streams = 0  # open event streams
        self.connections = 0  # connections being served
        self.last_answer = 0.0  # monotonic time the last answer ended
        super().__init__((HOST, port), _Handler)

    @property
    def cookie_name(self) -> str:  # cookies are per host, not per port: one name per preview
        return f"affstream_preview_{self.server_address[1]}"

    def process_request(self, request, client_address) -> None:
        with self.lock:
            full = self.connections >= MAX_CONNECTIONS
            if not full:
                self.connections += 1
        if full:
            _LOG.debug("preview: %d connections open; closing one from %s", MAX_CONNECTIONS, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self.lock:
                self.connections -= 1
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections -= 1

    def handle_error(self, request, client_address) -> None:  # a page that went away mid-answer
        _LOG.debug("preview: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # the socket's: reading a request, writing an answer
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("preview: " + format, *args)

    def _host_ok(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}")

    def _token_given(self) -> tuple[bool, bool]:
        """(authorised, by the URL's token): the token in the query or in the cookie."""
        expected = self.server.token.encode()
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "token" and hmac.compare_digest(value.encode(), expected):
                return True, True
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return False, False
        morsel = cookie.get(self.server.cookie_name)
        return (morsel is not None and hmac.compare_digest(morsel.value.encode(), expected)), False

    def do_GET(self) -> None:
        try:
            if not self._host_ok():
                self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain; charset=utf-8")
                return
            authorised, by_url = self._token_given()
            if not authorised:
                self._send(HTTPStatus.FORBIDDEN, b"open the preview URL affstream printed: it carries the session's "
                           b"token\n", "text/plain; charset=utf-8")
                return
            path = self.path.split("?", 1)[0]
            if path == "/":
                cookie = (f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"
                          if by_url else None)
                self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8",
                           {"Set-Cookie": cookie, "Referrer-Policy": "no-referrer"} if cookie else None)
            elif path == "/frame.jpg":
                self._picture()
            elif path == "/events":
                self._events()
            elif path == "/state.json":
                self._send(HTTPStatus.OK, json.dumps(self.server.hub.state()).encode(), "application/json")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with self.server.lock:
                self.server.last_answer = time.monotonic()

    def _send(self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if kind.startswith("text/html"):
            self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                             "style-src 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _picture(self) -> None:
        picture = self.server.hub.jpeg()
        if picture is None:
            self._send(HTTPStatus.NOT_FOUND, b"no frame yet\n", "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, picture.jpeg, "image/jpeg",
                   {"X-Frame-Seq": str(picture.seq), "X-Frame-Index": str(picture.frame_index),
                    "X-Frame-Time": f"{picture.time_s:.4f}"})

    def _events(self) -> None:
        """One page's event stream, until the session ends or the page goes away."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        hub = self.server.hub
        with self.server.lock:
            self.server.streams += 1
        hub.watch(+1)
        try:
            cursor = (0, 0, 0)
            while True:
                update = hub.wait(cursor, KEEPALIVE_S)
                cursor = update.cursor
                parts = []
                if update.records:
                    parts.append("event: rows\ndata: [" + ",".join(update.records) + "]\n\n")
                if update.stats is not None:
                    parts.append(f"event: stats\ndata: {update.stats}\n\n")
                if update.picture is not None:
                    parts.append(f"event: frame\ndata: {json.dumps(update.picture)}\n\n")
                if update.ended is not None:
                    parts.append(f"event: end\ndata: {update.ended}\n\n")
                if not parts:
                    parts.append(": keep-alive\n\n")
                self.wfile.write("".join(parts).encode())
                self.wfile.flush()
                if update.ended is not None:
                    return
        finally:
            hub.watch(-1)
            with self.server.lock:
                self.server.streams -= 1


class LivePreview:
    """The preview of one session: a :class:`~.hub.PreviewHub` and its server (see the
    module docstring). Build it with :meth:`start`."""

    def __init__(self, hub: PreviewHub, server: _Server, source: str) -> None:
        self.hub = hub
        self.source = source
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="affstream-preview-server", daemon=True)
        self._closed = False

    @classmethod
    def start(cls, port: int = 0, *, source: str = "", warning: str | None = None, hub: PreviewHub | None = None,
              request_timeout_s: float = REQUEST_TIMEOUT_S) -> LivePreview:
        """Listen on 127.0.0.1:``port`` (0: a free port) and start serving. AffstreamError
        (one line) when the port is taken or cannot be used."""
        hub = hub or PreviewHub()
        try:
            server = _Server(int(port), hub, page_html(page_config(source, warning)).encode(),
                             secrets.token_urlsafe(24), request_timeout_s)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AffstreamError(f"preview port {port} on {HOST} is already in use; choose another with "
                                     "--preview-port N, or leave it out to take a free one") from None
            raise AffstreamError(f"preview: cannot listen on {HOST}:{port} ({exc.strerror or exc})") from None
        preview = cls(hub, server, source)
        hub.start()
        preview._thread.start()
        return preview

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def token(self) -> str:
        """The session's access token (part of :attr:`url`)."""
        return self._server.token

    @property
    def url(self) -> str:
        """The page's address with the session's token (give it only to whoever may watch)."""
        host, port = self.address
        return f"http://{host}:{port}/?token={self._server.token}"

    def set_warning(self, warning: str | None) -> None:
        """Show ``warning`` (one line) as a banner on pages opened from now on (None: none)."""
        self._server.page = page_html(page_config(self.source, warning)).encode()

    def attach(self, session) -> None:
        """Observe ``session`` (a :class:`~affstream.pipeline.live.StreamSession` not yet
        iterated): its frames feed the hub, its clock times the rates."""
        self.hub.clock = session.feed.now
        session.observer = self.hub.observe

    def close(self, message: dict[str, Any] | None = None) -> None:
        """Tell the pages the session ended (``message``, e.g. ``{"text": ...}``), wait
        until they heard it (at most :data:`CLOSE_WAIT_S`), then stop serving. Twice is fine."""
        if self._closed:
            return
        self._closed = True
        self.hub.finish(message)
        deadline = time.monotonic() + CLOSE_WAIT_S
        while time.monotonic() < deadline:
            with self._server.lock:
                streams, quiet = self._server.streams, time.monotonic() - self._server.last_answer
            if streams == 0 and quiet >= QUIET_S:
                break
            time.sleep(0.05)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
