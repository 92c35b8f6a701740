"""Secrets never leave the process: credentials in a source URL are masked wherever a
source is named (reports, logs, the dashboard, the preview page, error lines).

    redact("rtsp://admin:hunter2@cam.local/stream")      -> "rtsp://admin:***@cam.local/stream"
    redact("https://host/live.m3u8?token=abc&quality=hd") -> "https://host/live.m3u8?token=***&quality=hd"
    redact("error opening rtsp://u:p@h/s: refused")       -> "error opening rtsp://u:***@h/s: refused"

The password of ``user:password@`` userinfo is masked (the user name stays, so the message
still says which account), and so is the value of every query parameter whose name says
it is a secret (token, key, password, signature, ...). Works on whole messages, so an
error text that quotes a URL is masked too. Only the text shown is changed: the source
itself is opened with its credentials.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ -> the password, up to the last "@" before the host's "/", "?" or "#"
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s@:'\"]*:)"  # scheme://user:
    r"(?P<secret>[^\s'\"]*?)"  # the password (it may hold "@" or ":")
    r"(?=@[^@/?#\s'\"]*(?:[/?#\s'\"]|$))"  # followed by @host and the end of the authority
)
# a user without a password can still carry a token: scheme://TOKEN@host is left as it is
_SECRET_PARAMS = re.compile(
    r"(?P<head>[?&;](?:[A-Za-z0-9_.-]*?)(?:pass|passwd|password|pwd|token|secret|key|apikey|api_key|auth|"
    r"signature|sig|credential|session)[A-Za-z0-9_.-]*=)(?P<secret>[^&#;\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: object) -> str:
    """``text`` with URL passwords and secret query values replaced by ``***``."""
    masked = _USERINFO.sub(lambda m: m.group("head") + (MASK if m.group("secret") else ""), str(text))
    return _SECRET_PARAMS.sub(lambda m: m.group("head") + (MASK if m.group("secret") else ""), masked)
