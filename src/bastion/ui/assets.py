"""The UI's static files, served from memory under a content-hashed URL with long caching.

``/ui/static/<hash>/<path>``: the hash is the first 16 hex digits of the file's SHA-256, so a
changed file gets a new URL and a browser may keep every URL forever. Only files found in the
package's ``static`` directory when the server starts are served; a path is looked up in that
table, never joined onto the file system.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

__all__ = ["STATIC_PREFIX", "Asset", "Assets"]

STATIC_PREFIX = "/ui/static"
_YEAR_S = 365 * 24 * 3600
_TYPES = {
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes, type and hashed URL."""

    path: str  # relative to the static directory, with "/" separators
    body: bytes
    content_type: str
    digest: str

    @property
    def url(self) -> str:
        return f"{STATIC_PREFIX}/{self.digest}/{self.path}"


class Assets:
    """Every static file of the package, read once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self._by_path: dict[str, Asset] = {}
        for path, body in files.items():
            suffix = path[path.rfind(".") :] if "." in path else ""
            content_type = _TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "text/plain"
            digest = hashlib.sha256(body).hexdigest()[:16]
            self._by_path[path] = Asset(path, body, content_type, digest)

    @classmethod
    def from_package(cls) -> Assets:
        """The files under ``bastion/ui/static`` (installed as package data)."""
        files: dict[str, bytes] = {}
        pending = [("", resources.files("bastion.ui").joinpath("static"))]
        while pending:
            prefix, folder = pending.pop()
            for entry in folder.iterdir():
                name = f"{prefix}{entry.name}"
                if entry.is_dir():
                    pending.append((f"{name}/", entry))
                elif not entry.name.startswith("."):
                    files[name] = entry.read_bytes()
        return cls(files)

    def url(self, path: str) -> str:
        """The hashed URL of the file at ``path``; KeyError names a file that is not there."""
        try:
            return self._by_path[path].url
        except KeyError:
            raise KeyError(f"no static file {path!r} in bastion/ui/static") from None

    def paths(self) -> list[str]:
        return sorted(self._by_path)

    def response(self, digest: str, path: str) -> web.Response:
        """The file, cached for a year; a 404 for an unknown path or a stale hash."""
        asset = self._by_path.get(path)
        if asset is None or asset.digest != digest:
            return web.Response(status=404, text="no such static file", content_type="text/plain")
        return web.Response(
            body=asset.body,
            content_type=asset.content_type,
            charset="utf-8" if asset.content_type.startswith("text/") else None,
            headers={"Cache-Control": f"public, max-age={_YEAR_S}, immutable"},
        )
