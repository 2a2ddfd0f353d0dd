"""Fetching prompts from the registry in an application: `PromptClient.get`.

    client = bastion.Client()                      # BASTION_URL, BASTION_API_KEY
    prompt = client.prompts.get("summarize")       # the version labelled production
    messages = prompt.render(ticket="The app crashes on upload.")

Where a prompt comes from, in order:

1. **Memory**, keyed by (name, label, version). Younger than ``cache_ttl_s``: returned with no
   I/O at all (a dict lookup). Older: returned at once as ``stale`` while one background thread
   per key refreshes it (stale-while-revalidate). A pinned ``version=`` never changes in the
   registry, so it is cached for the life of the client.
2. **The registry** (``GET /api/v1/prompts/{name}``), on a memory miss. Every successful fetch
   is also written to the on-disk cache by a writer thread (one JSON file per key, written to a
   temporary file and renamed over the old one, so a reader never sees half a file): the last
   known good copy. ``close()`` waits for pending writes.
3. When the registry is **unavailable** (refused, timed out, 5xx, 408/429, an unreadable
   answer): the on-disk copy (``disk``), else ``<fallback_dir>/<name>.prompt.yaml``
   (``fallback``), else `PromptUnavailable` naming the server's error. What was served is kept
   in memory and the registry is retried in the background, at most every
   ``min(cache_ttl_s, 5 s)``; for that long, other prompts missing from memory skip the network
   too, so an outage costs one timeout, not one per prompt.
4. A **4xx** is an answer, not an outage: an unknown prompt, version or label raises
   `PromptNotFound`, a bad key `PromptAuthError`, with the server's message; no cache or
   fallback masks it. A background refresh that gets a 4xx drops the memory entry, so the next
   `get` raises it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bastion import names
from bastion.prompts.files import SUFFIXES, PromptFileError, load_prompt_file
from bastion.prompts.model import PromptSpec, PromptSpecError
from bastion.prompts.template import find_includes
from bastion.prompts.transport import HttpTransport, TransportError
from bastion.prompts.versions import (
    PromptAuthError,
    PromptError,
    PromptNotFound,
    PromptSource,
    PromptUnavailable,
    PromptVersion,
)
from bastion.safe_paths import UnsafePath, file_under

__all__ = ["DEFAULT_LABEL", "PromptClient"]

log = logging.getLogger(__name__)

DEFAULT_LABEL = "production"
_DISK_FORMAT = 1
_MAX_RETRY_S = 5.0
_TRANSIENT = frozenset({408, 429})

Key = tuple[str, str | None, int | None]  # (name, label, version): one of the last two is None


class _Unavailable(Exception):
    """The registry could not answer (internal: triggers the disk and fallback path)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    hit: PromptVersion  # returned until `expires_at`
    expired: PromptVersion  # returned after it, while a refresh runs
    expires_at: float  # time.monotonic(); inf for pinned versions


class PromptClient:
    """Gets prompt versions: memory cache, registry, on-disk last known good, fallback files.

    Made by `bastion.Client` (``client.prompts``); thread-safe.
    """

    def __init__(
        self,
        transport: HttpTransport | None,
        *,
        cache_ttl_s: float,
        cache_dir: Path,
        fallback_dir: Path | None,
        namespace: str,
    ) -> None:
        self._transport = transport
        self._ttl = cache_ttl_s
        self._retry_s = max(0.05, min(cache_ttl_s, _MAX_RETRY_S))
        self._disk_dir = cache_dir / namespace
        self._fallback_dir = fallback_dir
        self._memory: dict[Key, _Entry] = {}
        # What this client last wrote to each last-known-good file, so that fetching the same
        # version again (after a TTL or a clear()) does not rewrite it.
        self._saved: dict[Key, tuple[str, int | None]] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[Key, threading.Lock] = {}
        self._refreshing: dict[Key, threading.Thread] = {}
        self._down_until = 0.0
        self._down_reason = ""
        self._closed = False
        self._writer: ThreadPoolExecutor | None = None
        self._writer_closed = False

    def get(
        self, name: str, *, label: str = DEFAULT_LABEL, version: int | None = None
    ) -> PromptVersion:
        """The prompt ``name`` at ``label`` (default ``production``), or at ``version``.

        ``version`` pins an exact version and takes precedence over ``label``. ``label="latest"``
        is the newest version. Raises `PromptNotFound` (unknown prompt, version or label),
        `PromptAuthError` (bad key) or `PromptUnavailable` (registry unreachable and nothing
        cached on disk or in ``fallback_dir``); ``ValueError`` for a malformed name or label.
        """
        key: Key = (name, None, version) if version is not None else (name, label, None)
        entry = self._memory.get(key)
        if entry is not None:
            if time.monotonic() < entry.expires_at:
                return entry.hit
            self._start_refresh(key)
            return entry.expired
        return self._miss(key)

    def clear(self) -> None:
        """Forget the in-memory cache (the on-disk last-known-good copies stay)."""
        with self._lock:
            self._memory.clear()

    def close(self) -> None:
        """Stop background refreshes (waits for running ones and for pending cache-file writes)
        and forget the memory cache."""
        with self._lock:
            self._closed = True
            running = list(self._refreshing.values())
        for thread in running:
            thread.join()
        with self._lock:
            writer, self._writer = self._writer, None
            self._writer_closed = True
        if writer is not None:
            writer.shutdown(wait=True)
        self.clear()

    # -- memory misses and refreshes -----------------------------------------------------------

    def _miss(self, key: Key) -> PromptVersion:
        _check_key(key)
        if self._closed:
            raise RuntimeError("the bastion client is closed")
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one fetch per key: concurrent misses wait for it
            entry = self._memory.get(key)
            if entry is not None:
                return entry.hit
            if time.monotonic() < self._down_until:
                prompt = self._offline(key, self._down_reason)
            else:
                try:
                    prompt = self._fetch(key)
                except _Unavailable as exc:
                    self._down_until = time.monotonic() + self._retry_s
                    self._down_reason = str(exc)
                    prompt = self._offline(key, str(exc))
            self._remember(key, prompt)
            return prompt

    def _start_refresh(self, key: Key) -> None:
        with self._lock:
            if self._closed or key in self._refreshing:
                return
            thread = threading.Thread(
                target=self._refresh, args=(key,), name=f"bastion-prompt-refresh {key[0]}"
            )
            thread.daemon = True
            self._refreshing[key] = thread
        thread.start()

    def _refresh(self, key: Key) -> None:
        try:
            prompt = self._fetch(key)
        except PromptError as exc:
            log.warning("refreshing prompt %s: %s; dropping the cached copy", _show(key), exc)
            with self._lock:
                self._memory.pop(key, None)
        except Exception as exc:  # noqa: BLE001 - a refresh must never kill its thread noisily
            reason = exc if isinstance(exc, _Unavailable) else f"{type(exc).__name__}: {exc}"
            log.warning("refreshing prompt %s: %s; serving the cached copy", _show(key), reason)
            retry_at = time.monotonic() + self._retry_s
            with self._lock:
                current = self._memory.get(key)
                if current is not None and not self._closed:
                    self._memory[key] = _Entry(current.expired, current.expired, retry_at)
        else:
            self._remember(key, prompt)
        finally:
            with self._lock:
                self._refreshing.pop(key, None)

    def _remember(self, key: Key, prompt: PromptVersion) -> None:
        if prompt.source == "server":
            pinned = key[2] is not None
            entry = _Entry(
                _with_source(prompt, "cache"),
                _with_source(prompt, "stale"),
                float("inf") if pinned else time.monotonic() + self._ttl,
            )
        else:  # degraded: keep serving it as what it is, and retry the registry later
            entry = _Entry(prompt, prompt, time.monotonic() + self._retry_s)
        with self._lock:
            if not self._closed:
                self._memory[key] = entry

    # -- the registry ---------------------------------------------------------------------------

    def _fetch(self, key: Key) -> PromptVersion:
        name, label, version = key
        if self._transport is None:
            raise _Unavailable("no server configured (set BASTION_URL or pass base_url)")
        query = {"version": str(version)} if version is not None else {"label": str(label)}
        try:
            status, body = self._transport.get(f"/api/v1/prompts/{name}", query)
        except TransportError as exc:
            raise _Unavailable(f"{self._transport.base_url}: {exc}") from exc
        if status == 200:
            try:
                data = orjson.loads(body)
                prompt = _parse(data, label, "server")
            except (orjson.JSONDecodeError, PromptSpecError, KeyError, TypeError) as exc:
                raise _Unavailable(f"unreadable answer from the server: {exc}") from exc
            self._down_until = 0.0
            self._queue_save(key, data, prompt)
            return prompt
        message = _error_message(body) or f"HTTP {status}"
        if status >= 500 or status in _TRANSIENT:
            raise _Unavailable(f"server error {status}: {message}")
        what = f"prompt {_show(key)}: {message}"
        if status == 404:
            raise PromptNotFound(what, name=name, status=status)
        if status in (401, 403):
            raise PromptAuthError(what, name=name, status=status)
        raise PromptError(f"{what} (HTTP {status})", name=name, status=status)

    # -- the on-disk cache and fallback files ----------------------------------------------------

    def _disk_path(self, key: Key) -> Path:
        name, label, version = key
        return self._disk_dir / (
            f"{name}@v{version}.json" if label is None else f"{name}@{label}.json"
        )  # name and label are valid names (_check_key): a plain file name

    def _queue_save(self, key: Key, data: Any, prompt: PromptVersion) -> None:
        """Write the last-known-good file on the writer thread: a write (temporary file, then
        rename) costs ~0.1-1 ms, which a fetch should not wait for. One writer, first in first
        out, so the newest fetch of a key is the last write."""
        written = (prompt.content_hash, prompt.version)
        with self._lock:
            if self._writer_closed or self._saved.get(key) == written:
                return  # a fetch that changed nothing: the file already holds it
            self._saved[key] = written
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="bastion-prompt-cache")
            self._writer.submit(self._save, key, data)

    def _save(self, key: Key, data: Any) -> None:
        path = self._disk_path(key)
        record = {"format": _DISK_FORMAT, "saved_at": datetime.now(UTC).isoformat(), "prompt": data}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path = file_under(path.parent, path.name)  # never through a planted symlink
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(orjson.dumps(record))
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except (OSError, UnsafePath) as exc:
            with self._lock:
                self._saved.pop(key, None)  # try again on the next fetch
            log.warning("cannot write the prompt cache file %s: %s", path, exc)

    def _offline(self, key: Key, reason: str) -> PromptVersion:
        prompt = self._from_disk(key) or self._from_fallback(key)
        if prompt is None:
            where = f"; no cached copy in {self._disk_dir}"
            if self._fallback_dir is not None:
                where += f" and no fallback file in {self._fallback_dir}"
            raise PromptUnavailable(
                f"prompt {_show(key)} is unavailable: {reason}{where}", name=key[0]
            )
        log.warning(
            "prompt %s: the registry is unavailable (%s); serving %s (%s)",
            _show(key), reason, prompt.source, prompt.version or "no version",
        )  # fmt: skip
        return prompt

    def _from_disk(self, key: Key) -> PromptVersion | None:
        path = self._disk_path(key)
        try:
            record = orjson.loads(path.read_bytes())
            if record.get("format") != _DISK_FORMAT:
                return None
            prompt = _parse(record["prompt"], key[1], "disk")
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError, PromptSpecError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable prompt cache file %s: %s", path, exc)
            return None
        if prompt.name != key[0] or (key[2] is not None and prompt.version != key[2]):
            log.warning("ignoring the prompt cache file %s: it holds another prompt", path)
            return None
        return prompt

    def _from_fallback(self, key: Key) -> PromptVersion | None:
        if self._fallback_dir is None:
            return None
        spec = self._fallback_spec(key[0])
        if spec is None:
            return None
        partials: dict[str, PromptSpec] = {}
        pending = list(find_includes(spec))
        while pending:
            name = pending.pop()
            if name in partials or name == spec.name:
                continue
            partial = self._fallback_spec(name)
            if partial is None:
                log.warning(
                    "fallback prompt %r includes %r, which has no fallback file", key[0], name
                )
                continue  # rendering names the missing partial
            partials[name] = partial
            pending.extend(find_includes(partial))
        return PromptVersion(
            name=spec.name,
            version=None,
            label=key[1],
            content_hash=spec.content_hash(),
            spec=spec,
            partials=partials,
            source="fallback",
        )

    def _fallback_spec(self, name: str) -> PromptSpec | None:
        assert self._fallback_dir is not None
        for suffix in SUFFIXES:
            path = self._fallback_dir / f"{name}{suffix}"
            if path.is_file():
                try:
                    return load_prompt_file(path)
                except (PromptFileError, OSError) as exc:
                    log.warning("ignoring the invalid fallback file %s: %s", path, exc)
                    return None
        return None


def namespace_of(base_url: str | None, api_key: str | None) -> str:
    """The on-disk cache's subdirectory for one server and key, so two projects sharing a cache
    directory never see each other's prompts (the key is hashed, never stored)."""
    seed = f"{(base_url or '').rstrip('/')}\0{api_key or ''}".encode()
    return hashlib.sha256(seed).hexdigest()[:16]


def _parse(data: Mapping[str, Any], label: str | None, source: PromptSource) -> PromptVersion:
    spec = PromptSpec.from_dict(data["spec"])
    partials = {name: PromptSpec.from_dict(raw) for name, raw in data["partials"].items()}
    return PromptVersion(
        name=str(data["name"]),
        version=int(data["version"]),
        label=label,
        content_hash=str(data["content_hash"]),
        spec=spec,
        partials=partials,
        source=source,
        labels=tuple(str(x) for x in data.get("labels", ())),
    )


def _with_source(prompt: PromptVersion, source: PromptSource) -> PromptVersion:
    return PromptVersion(
        name=prompt.name,
        version=prompt.version,
        label=prompt.label,
        content_hash=prompt.content_hash,
        spec=prompt.spec,
        partials=prompt.partials,
        source=source,
        labels=prompt.labels,
    )


def _error_message(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
        message = data["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        return text[:300] or None
    return str(message)


def _check_key(key: Key) -> None:
    name, label, version = key
    names.PROMPT.check(name)  # also what keeps the cache file names inside the cache
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be a positive integer, got {version!r}")
    else:
        names.LABEL.check(label)


def _show(key: Key) -> str:
    name, label, version = key
    return f"{name!r} version {version}" if version is not None else f"{name!r} label {label!r}"
