"""Which local paths can be media, judged from the file system alone (``stat``, never
``open``): missing files, broken or looping symbolic links, directories, FIFOs and
devices (reading those would block or never end), empty or unreadable files each get
their own one-line message naming the path and what to do.

:func:`ffmpeg_path` protects local names from being read by FFmpeg as protocols.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import SourceError

# the one hint for a folder given where a file was expected (annotate, stream, render...)
DIRECTORY_HINT = "give a video or image file, or annotate a folder of videos with: affstream corpus FOLDER -o OUT"


def display_name(path: str | os.PathLike) -> str:
    """``path`` as the str used in messages (FFmpeg gets :func:`ffmpeg_path` of it)."""
    name = os.fspath(path)
    return name if isinstance(name, str) else os.fsdecode(name)


def describe_unusable_input(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a media file, as one line naming it and what to do; None
    when it looks usable (a readable, non-empty regular file, or a URL).

    Only the file system is asked (``lstat`` / ``stat`` / ``access``); the file is never
    opened, so this is safe (and cheap) on FIFOs and devices, for which opening for
    reading would block or never end. The problems, each with its own message: no such
    file, a broken symbolic link, a symbolic link loop, a directory, a named pipe (FIFO),
    a character or block device, a socket, any other non-regular file, an empty file, no
    permission to read. A path through a symbolic link is judged by what it points to, and
    the message names the target.
    """
    name = display_name(path)
    if "://" in name:  # URL: nothing to check on the file system
        return None
    if "\0" in name:
        return f"{name!r}: not a valid path (it holds a NUL character); check the path"
    try:
        link = os.lstat(name)
    except OSError as error:
        return _stat_problem(name, error)
    via = ""
    if stat.S_ISLNK(link.st_mode):
        target = _link_target(name)
        try:
            os.stat(name)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return (f"{name}: symbolic link loop ({name} -> {target} -> ... never reaches "
                        "a file); point the link at a video file")
            if isinstance(error, (FileNotFoundError, NotADirectoryError)):
                return (f"{name}: broken symbolic link (its target {target} does not "
                        "exist); point the link at a video file or give the file itself")
            return _stat_problem(name, error)
        via = f" (symbolic link to {os.path.realpath(name)})"
    try:
        mode = os.stat(name).st_mode
    except OSError as error:  # removed or changed since lstat
        return _stat_problem(name, error)
    if stat.S_ISDIR(mode):
        return f"{name}: is a directory; {DIRECTORY_HINT}"
    if not stat.S_ISREG(mode):
        return _special_file_problem(name, mode, via)
    if os.path.getsize(name) == 0:
        return f"{name}: file is empty (0 bytes); give a video or image file"
    if not os.access(name, os.R_OK):
        return f"{name}: permission denied; make the file readable"
    return None


def _stat_problem(name: str, error: OSError) -> str:
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return f"{name}: no such file; check the path"
    if isinstance(error, PermissionError):
        return f"{name}: permission denied (a folder on the path cannot be searched); check its permissions"
    if error.errno == errno.ELOOP:
        return f"{name}: symbolic link loop in the path; fix the links on the path"
    reason = error.strerror or type(error).__name__
    return f"{name}: cannot be read ({reason}); check the path"


def _special_file_problem(name: str, mode: int, via: str) -> str:
    if stat.S_ISFIFO(mode):
        return (f"{name}: is a named pipe (FIFO){via}, not a regular file; reading it would "
                "block, so it is not opened: save the video to a file and give that file")
    if stat.S_ISCHR(mode):
        return (f"{name}: is a character device{via}, not a regular file; reading it would "
                "block or never end, so it is not opened: give a video file")
    if stat.S_ISBLK(mode):
        return f"{name}: is a block device{via}, not a regular file; give a video file"
    if stat.S_ISSOCK(mode):
        return f"{name}: is a socket{via}, not a regular file; give a video file"
    return f"{name}: is not a regular file{via}; give a video file"


def _link_target(name: str) -> str:
    try:
        return os.readlink(name)
    except OSError:
        return "?"


def check_path(path: str | os.PathLike) -> str:
    """The display name of ``path``; raise SourceError (the line of
    :func:`describe_unusable_input`) for paths that cannot be media."""
    name = display_name(path)
    problem = describe_unusable_input(name)
    if problem is not None:
        raise SourceError(problem)
    return name


def ffmpeg_path(name: str) -> str:
    """What to give FFmpeg for the local file ``name``: a relative name gets a leading
    ``./``, so that FFmpeg never reads a file name such as ``pipe:0.mp4``, ``file:x.mp4``
    or ``concat:a.mp4`` as a protocol (stdin, another file, several files). URLs
    (``scheme://``) and absolute paths are given as they are."""
    if "://" in name or os.path.isabs(name):
        return name
    return os.path.join(os.curdir, name)
