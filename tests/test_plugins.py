"""The one plugin loader: installed entry points, registrations, the allowlist, load errors."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.evals.scorers import ScorerContext, ScorerError, make_scorer
from bastion.gateway.tiers import ClassifierError, make_classifier
from bastion.plugins import PluginError, PluginGroup
from bastion.settings import PluginSettings, Settings


class Installed:
    """A distribution installed on ``sys.path`` (a ``.dist-info`` with entry points), so
    discovery goes through ``importlib.metadata`` exactly as for a pip-installed plugin."""

    def __init__(self, root: Path, group: str) -> None:
        self.root = root
        self.group = group
        self.module = f"plugin_mod_{uuid.uuid4().hex[:8]}"

    def install(self, dist: str, entries: dict[str, str], source: str) -> None:
        (self.root / f"{self.module}.py").write_text(source)
        info = self.root / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {self.module}:{attr}\n" for name, attr in entries.items())
        (info / "entry_points.txt").write_text(f"[{self.group}]\n{lines}")


@pytest.fixture
def group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PluginGroup[object], Installed]]:
    name = f"bastion.test-{uuid.uuid4().hex[:8]}"
    installed = Installed(tmp_path, name)
    installed.install(
        "Acme_Plugins",
        {"shout": "shout", "whisper": "whisper", "broken": "missing_attr"},
        "import sys\nshout = object()\nwhisper = object()\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins: PluginGroup[object] = PluginGroup(name, "widget")
    plugins.reload()
    yield plugins, installed
    sys.modules.pop(installed.module, None)
    plugins.reload()


def test_installed_plugins_are_listed_loaded_once_and_registrations_win(
    group: tuple[PluginGroup[object], Installed],
) -> None:
    plugins, installed = group
    assert plugins.names() == ["broken", "shout", "whisper"]
    first = plugins.load("shout")
    assert first is sys.modules[installed.module].shout
    assert plugins.load("shout") is first  # cached: imported once
    mine = object()
    plugins.register("shout", mine)
    plugins.register("local", mine)
    assert plugins.load("shout") is mine
    assert "local" in plugins.names()
    assert "local" in plugins


def test_unknown_plugin_names_the_group_and_the_known_ones(
    group: tuple[PluginGroup[object], Installed],
) -> None:
    plugins, _ = group
    with pytest.raises(PluginError) as caught:
        plugins.load("shoot")
    message = str(caught.value)
    assert "unknown widget 'shoot'" in message
    assert "known: broken, shout, whisper" in message
    assert repr(plugins.group) in message


def test_a_broken_plugin_import_is_reported_with_its_name_and_cause(
    group: tuple[PluginGroup[object], Installed], tmp_path: Path
) -> None:
    plugins, installed = group
    with pytest.raises(PluginError) as caught:
        plugins.load("broken")
    message = str(caught.value)
    assert f"widget 'broken': cannot load '{installed.module}:missing_attr'" in message
    assert repr(plugins.group) in message
    assert "AttributeError" in message
    crashing = Installed(tmp_path, plugins.group)
    crashing.install("crashing", {"crash": "f"}, "raise RuntimeError('no config here')\n")
    plugins.reload()
    with pytest.raises(PluginError, match=r"cannot load .*RuntimeError: no config here"):
        plugins.load("crash")


def test_the_allowlist_admits_by_entry_point_or_distribution_name(
    group: tuple[PluginGroup[object], Installed],
) -> None:
    plugins, _ = group
    g = plugins.group
    assert plugins.load("shout", allow=PluginSettings()) is not None  # default: all installed
    assert plugins.load("shout", allow=PluginSettings(allow={"other": []})) is not None
    only_shout = PluginSettings(allow={g: ["shout"]})
    assert plugins.load("shout", allow=only_shout) is not None
    with pytest.raises(PluginError) as caught:
        plugins.load("whisper", allow=only_shout)
    message = str(caught.value)
    assert "'whisper'" in message
    assert "is not allowed" in message
    assert f"plugins.allow[{g!r}]" in message
    assert "'Acme_Plugins'" in message
    # A distribution name matches however it is spelled (PEP 503 normalisation).
    assert plugins.load("whisper", allow=PluginSettings(allow={g: ["acme-plugins"]})) is not None
    # Refusal comes before any import: a refused plugin's code never runs.
    with pytest.raises(PluginError, match="is not allowed"):
        plugins.load("broken", allow=PluginSettings(allow={g: []}))


def test_builtin_scorers_and_classifiers_are_always_allowed() -> None:
    locked = PluginSettings(allow={"bastion.scorers": [], "bastion.classifiers": []})
    scorer = make_scorer({"type": "contains", "value": "x"}, context=ScorerContext(plugins=locked))
    assert scorer.name == "contains"
    assert make_classifier("rules", {}, allow=locked) is not None


def test_a_third_party_scorer_outside_the_allowlist_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.evals.scorers import registry

    installed = Installed(tmp_path, "bastion.scorers")
    installed.install("acme-scorers", {"acme-check": "make"}, "def make(spec, ctx):\n    1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_scorers()
    try:
        locked = ScorerContext(plugins=PluginSettings(allow={"bastion.scorers": ["other"]}))
        with pytest.raises(ScorerError, match=r"plugins.allow\['bastion.scorers'\]"):
            make_scorer({"type": "acme-check"}, context=locked)
        # Allowed, it is loaded and called (and its own failure surfaces).
        allowed = ScorerContext(plugins=PluginSettings(allow={"bastion.scorers": ["acme-check"]}))
        with pytest.raises(ZeroDivisionError):
            make_scorer({"type": "acme-check"}, context=allowed)
    finally:
        monkeypatch.undo()
        sys.modules.pop(installed.module, None)
        registry.reload_scorers()


def test_the_allowlist_is_a_setting_applied_to_classifiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.gateway.tiers import CLASSIFIERS

    installed = Installed(tmp_path, "bastion.classifiers")
    installed.install("acme-routing", {"acme": "make"}, "def make(options):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BASTION_PLUGINS__ALLOW", '{"bastion.classifiers": ["rules"]}')
    CLASSIFIERS.reload()
    try:
        settings = Settings()
        assert settings.plugins.allowed("bastion.classifiers") == frozenset({"rules"})
        with pytest.raises(ClassifierError, match=r"plugins\.allow"):
            make_classifier("acme", {}, allow=settings.plugins)
        with pytest.raises(ClassifierError, match="returned no classify"):
            make_classifier("acme", {})
    finally:
        monkeypatch.undo()
        sys.modules.pop(installed.module, None)
        CLASSIFIERS.reload()
