"""Where model weights come from, in one place.

* Shipped weights (MTCNN): ``weights/manifest.json`` maps each file to its sha256;
  :func:`load_verified_state` checks the checksum before reading the safetensors file.
* open_clip weights named by a pretrained tag live in the Hugging Face cache:
  :func:`cached_checkpoint` finds them without touching the network, :func:`hf_offline`
  keeps huggingface_hub to cache lookups, and :func:`checkpoint_sha256` identifies them.
* When a tag's weights are missing and cannot be downloaded (offline,
  ``AFFSTREAM_OFFLINE=1``, no route to the hub; :func:`offline_requested`,
  :func:`hub_unreachable_reason`), :func:`missing_weights_message` says how to supply
  them. Weights are never replaced by random ones silently.
* open_clip logs through the root logger; :func:`open_clip_logs` reroutes its records to
  the "affstream" logger while a model is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import WeightsError
from .files import sha256_file, sha256_file_cached, shipped_dir

log = logging.getLogger("affstream")

_PROBE_TIMEOUT_S = 4.0  # longest wait for a TCP connection to the model hub
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


# ----------------------------------------------------------------- shipped weights


def _read_manifest(weights_dir: Path) -> dict[str, str]:
    path = weights_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights manifest missing; reinstall affstream") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WeightsError(f"{path}: weights manifest is not valid JSON; reinstall affstream") from None
    if not isinstance(manifest, dict):
        raise WeightsError(f"{path}: weights manifest must map file names to sha256; reinstall affstream")
    return manifest


def load_verified_state(relpath: str, weights_dir: Path | None = None) -> dict:
    """Load ``weights/<relpath>`` (safetensors) after checking its sha256 in the manifest.

    Returns the state dict ({name: torch.Tensor} on the CPU).

    Raises WeightsError naming the file when it is missing, unlisted, corrupt or unreadable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(weights_dir) if weights_dir is not None else shipped_dir("weights")
    expected = _read_manifest(root).get(relpath)
    path = root / relpath
    if expected is None:
        raise WeightsError(f"{path}: not listed in {root / 'manifest.json'}; reinstall affstream")
    if not path.is_file():
        raise WeightsError(f"{path}: shipped weight file missing; reinstall affstream")
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path}: checksum mismatch (sha256 {actual[:12]}..., expected {expected[:12]}...); "
            "the file is corrupt, reinstall affstream"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: cannot read weights ({exc}); reinstall affstream") from None


# ------------------------------------------------------------------- open_clip weights


def offline_requested() -> bool:
    """True when ``AFFSTREAM_OFFLINE`` is set to anything but "" or "0"."""
    return os.environ.get("AFFSTREAM_OFFLINE", "").strip() not in ("", "0")


def cached_checkpoint(cfg: dict) -> str | None:
    """Path of the tag's weights if already in the local (Hugging Face) cache, else None."""
    from open_clip.pretrained import download_pretrained

    try:
        with hf_offline(), open_clip_logs():
            path = download_pretrained(cfg)
    except Exception:  # noqa: BLE001 - any lookup failure means: not in the cache
        return None
    return path or None


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Force huggingface_hub into offline mode (cache lookups only) for the block.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so its module constant is patched
    as well as the environment variable; both are restored afterwards.
    """
    from huggingface_hub import constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def hub_unreachable_reason() -> str | None:
    """None if a TCP connection to the model hub (or the configured proxy) opens quickly.

    Probing first turns minutes of HTTP retries into a few seconds when offline. Runs in
    a daemon thread because name resolution ignores socket timeouts.
    """
    import socket
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants

    parts = urllib.parse.urlsplit(constants.ENDPOINT)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = target.hostname or host, target.port or 8080
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot reach {host}:{port} ({exc.strerror or exc})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 1.0)
    if not outcome:
        return f"no answer from {host}:{port} within {_PROBE_TIMEOUT_S:.0f} s"
    return outcome[0]


def missing_weights_message(spec, reason: str, *, offline: bool = False) -> str:
    one_liner = (
        f"python -c \"import open_clip; open_clip.create_model('{spec.arch}', "
        f"pretrained='{spec.source}')\""
    )
    tail = "" if offline else ", or set AFFSTREAM_OFFLINE=1 to never try the network"
    # OpenAI's weights use QuickGELU; a local file must name the matching architecture.
    file_arch = f"{spec.arch}-quickgelu" if spec.source == "openai" and "quickgelu" not in spec.arch else spec.arch
    return (
        f"backbone {spec}: weights are not in the local cache and cannot be downloaded "
        f"({reason}); run once on a connected machine: {one_liner} (then copy its Hugging "
        f"Face cache, ~/.cache/huggingface), or pass --backbone {file_arch}:/path/to/"
        f"open_clip_weights{tail}"
    )


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a cached checkpoint; Hugging Face names LFS blobs by it, so reuse that."""
    blob = path.resolve()
    if _SHA256_NAME.match(blob.name):
        return blob.name
    return sha256_file_cached(blob)


# ------------------------------------------------------------------------ open_clip logs


class _RerouteOpenClipLogs(logging.Filter):
    """open_clip logs through the root logger; pass its records to ours instead.

    The per-call "initialized randomly" warning is expected for ``ARCH:random`` and is
    demoted to DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        message = record.getMessage()
        level = record.levelno
        if level < logging.WARNING or "No pretrained weights loaded" in message:
            level = logging.DEBUG
        log.log(level, "open_clip: %s", message)
        return False


@contextlib.contextmanager
def open_clip_logs() -> Iterator[None]:
    """Route open_clip's root-logger records to "affstream" for the block.

    A NullHandler guards a handler-less root logger, because module-level
    ``logging.info`` calls would otherwise install a stderr handler (basicConfig).
    """
    root = logging.getLogger()
    reroute = _RerouteOpenClipLogs()
    guard = logging.NullHandler() if not root.handlers else None
    root.addFilter(reroute)
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        root.removeFilter(reroute)
        if guard is not None:
            root.removeHandler(guard)

