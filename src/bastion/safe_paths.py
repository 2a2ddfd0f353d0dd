"""The one way to turn a name into a file path: a plain file name that stays in its directory.

Names come from users, databases and servers (``bastion prompts pull --url`` writes what a
server lists); a name like ``../../x``, ``/etc/x`` or one whose file is a symlink out of the
directory must never become a write elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UnsafePath", "file_under"]

_SEPARATORS = frozenset(filter(None, ("/", "\\", os.sep, os.altsep)))


class UnsafePath(ValueError):
    """A file name that is not a plain name, or that resolves outside its directory."""


def file_under(directory: Path, filename: str) -> Path:
    """``directory / filename``, when ``filename`` is one plain path component (no separator,
    not ``.`` or ``..``, no NUL or control character) and the path, symlinks followed, is a
    direct child of ``directory``.

    Raises:
        UnsafePath: naming the file name and the directory.
    """
    plain = (
        filename not in {"", ".", ".."}
        and not any(sep in filename for sep in _SEPARATORS)
        and all(ch >= " " and ch != "\x7f" for ch in filename)
    )
    if not plain:
        raise UnsafePath(f"refusing to write {filename!r}: not a plain file name in {directory}")
    path = directory / filename
    if path.resolve().parent != directory.resolve():
        raise UnsafePath(f"refusing to write {path}: it resolves outside {directory}")
    return path
