"""The vendored JavaScript is exactly what the vendoring script pinned, and every file the UI
serves is package data (a non-editable install has it)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from bastion.ui.assets import Assets

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "src" / "bastion" / "ui"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "vendor_ui_assets", ROOT / "scripts" / "vendor_ui_assets.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_committed_vendor_files_match_the_pins() -> None:
    script = _script()
    assert script.check_committed() == []
    pinned = {name for p in script.PACKAGES for name, _ in p.files.values()}
    assert pinned == {p.name for p in (UI / "static" / "vendor").iterdir()}
    assert all(len(p.tarball_sha256) == 64 for p in script.PACKAGES)


def test_a_changed_vendor_file_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script()
    for package in script.PACKAGES:
        for name, _ in package.files.values():
            (tmp_path / name).write_bytes((script.VENDOR_DIR / name).read_bytes())
    (tmp_path / "htmx.min.js").write_bytes(b"alert(1)")
    monkeypatch.setattr(script, "VENDOR_DIR", tmp_path)
    assert [p.split(":")[0] for p in script.check_committed()] == ["htmx.min.js"]


def test_every_template_and_static_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["bastion"]
    for folder in ("templates", "static"):
        for path in (UI / folder).rglob("*"):
            if path.is_file():
                relative = path.relative_to(ROOT / "src" / "bastion")
                assert any(relative.match(p) for p in patterns), relative
    served = Assets.from_package().paths()
    assert {"app.css", "app.js", "vendor/htmx.min.js", "vendor/uPlot.iife.min.js"} <= set(served)
