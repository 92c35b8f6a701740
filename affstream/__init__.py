"""affstream: frame-exact facial affect analysis of video.

Importing the package is cheap (no torch); the API is loaded on first use:

    import affstream
    run = affstream.annotate("video.mp4", pipeline="smoke")
    for row in run:            # one FrameAnnotation per face per frame
        ...
"""

from __future__ import annotations

from .version import __version__

_API = ("annotate", "annotate_inputs", "annotate_to_files", "iter_face_features", "stream")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'affstream' has no attribute {name!r}")


__all__ = ["__version__", *_API]
