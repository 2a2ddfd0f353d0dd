"""Plugins: named objects found through an entry-point group, or registered in-process.

Every pluggable kind (scorers in ``bastion.scorers``, routing classifiers in
``bastion.classifiers``, and the groups still to come) goes through one :class:`PluginGroup`,
so they are found, refused and reported the same way. A package declares

.. code-block:: toml

    [project.entry-points."bastion.scorers"]
    my-check = "my_package.scorers:make_my_check"

and :meth:`PluginGroup.load` imports ``make_my_check`` the first time ``my-check`` is asked
for. The ``plugins.allow`` setting (:class:`bastion.settings.PluginSettings`) may restrict which
installed entry points a group loads; bastion's own entry points and in-process registrations
(:meth:`PluginGroup.register`, made by the embedding application's code) are always allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from bastion.settings import PluginSettings

__all__ = ["BUILTIN_DISTRIBUTION", "PluginError", "PluginGroup", "is_builtin"]

BUILTIN_DISTRIBUTION = "bastion-llmops"

_T = TypeVar("_T")


class PluginError(ValueError):
    """A plugin cannot be found, is refused by the allowlist, or fails to load."""


def _normalized(name: str) -> str:
    # Distribution names compare case-insensitively with runs of -_. equal (PEP 503).
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return _normalized(dist.name) if dist is not None else None


def is_builtin(ep: EntryPoint) -> bool:
    """True for an entry point bastion itself ships: declared by its distribution and pointing
    into the ``bastion`` package."""
    return _distribution(ep) == BUILTIN_DISTRIBUTION and ep.value.startswith("bastion.")


@cache
def _discover(group: str) -> dict[str, tuple[EntryPoint, ...]]:
    found: dict[str, dict[str, EntryPoint]] = {}
    for ep in entry_points(group=group):
        # The same distribution seen twice on sys.path declares the same value: keep one.
        found.setdefault(ep.name, {}).setdefault(ep.value, ep)
    return {name: tuple(by_value.values()) for name, by_value in found.items()}


class PluginGroup(Generic[_T]):
    """The plugins of one entry-point ``group``; ``kind`` names one in messages (``"scorer
    type"``), ``error`` is the exception raised (a :class:`PluginError` by default)."""

    def __init__(
        self,
        group: str,
        kind: str,
        *,
        error: Callable[[str], Exception] = PluginError,
    ) -> None:
        self.group = group
        self.kind = kind
        self._error = error
        self._registered: dict[str, _T] = {}
        self._loaded: dict[str, _T] = {}

    def register(self, name: str, plugin: _T) -> None:
        """Register ``plugin`` under ``name`` in this process (an entry point does it for a
        package; this is for applications embedding bastion, and tests). It wins over an
        entry point of the same name."""
        self._registered[name] = plugin

    def entry_points(self) -> dict[str, tuple[EntryPoint, ...]]:
        """The group's installed entry points by name (read once, see :meth:`reload`)."""
        return _discover(self.group)

    def names(self) -> list[str]:
        """Every name known: installed entry points and in-process registrations, sorted."""
        return sorted(set(self.entry_points()) | set(self._registered))

    def __contains__(self, name: object) -> bool:
        return name in self._registered or name in self.entry_points()

    def reload(self) -> None:
        """Forget the entry points read and loaded so far (after installing a plugin in a
        running process). Registrations stay."""
        _discover.cache_clear()
        self._loaded.clear()

    def load(
        self,
        name: str,
        *,
        allow: PluginSettings | None = None,
        shown: str | None = None,
        known_hint: str = "",
    ) -> _T:
        """The plugin ``name``: a registration, else its entry point, imported once.

        ``shown`` is the name as the user wrote it (for messages) and ``known_hint`` is added
        to the list of known names when ``name`` is unknown.

        Raises:
            the group's error: unknown name (listing the known ones), registered more than
            once, refused by ``plugins.allow``, or failing to import.
        """
        registered = self._registered.get(name)
        if registered is not None:
            return registered
        candidates = self.entry_points().get(name)
        if not candidates:
            known = ", ".join(self.names()) or "none"
            raise self._error(
                f"unknown {self.kind} {shown or name!r} (known: {known}{known_hint}; "
                f"plugins of entry-point group {self.group!r})"
            )
        if len(candidates) > 1:
            values = ", ".join(ep.value for ep in candidates)
            raise self._error(
                f"{self.kind} {name!r} is registered more than once in {self.group!r}: {values}"
            )
        ep = candidates[0]
        self._check_allowed(ep, allow)
        cached = self._loaded.get(name)
        if cached is not None:
            return cached
        try:
            plugin: _T = ep.load()
        except Exception as exc:  # any import-time failure of a plugin, reported with its name
            raise self._error(
                f"{self.kind} {name!r}: cannot load {ep.value!r} from {self.group!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._loaded[name] = plugin
        return plugin

    def _check_allowed(self, ep: EntryPoint, allow: PluginSettings | None) -> None:
        if allow is None or is_builtin(ep):
            return
        allowed = allow.allowed(self.group)
        if allowed is None:
            return
        dist = _distribution(ep)
        if ep.name in allowed or (dist is not None and dist in {_normalized(a) for a in allowed}):
            return
        source = f" (distribution {ep.dist.name!r})" if ep.dist is not None else ""
        raise self._error(
            f"{self.kind} {ep.name!r} ({ep.value!r}{source}) is not allowed: add it, or its "
            f"distribution, to plugins.allow[{self.group!r}] in the settings"
        )
