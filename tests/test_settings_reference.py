"""docs/settings.md is generated from the Settings model and cannot go stale."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from bastion.settings import Settings
from bastion.settings_reference import main, render

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_checked_in_reference_matches_the_model() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        "docs/settings.md is stale: run python -m bastion.settings_reference"
    )


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for name, info in model.model_fields.items():
        found.append((f"{prefix}{name}", info.description))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(_fields(annotation, f"{prefix}{name}."))
    return found


def test_every_field_has_a_description() -> None:
    missing = [name for name, description in _fields(Settings) if not description]
    assert missing == []


def test_every_configurable_field_is_in_the_reference() -> None:
    text = render()
    for key in ("home", "ingest.batch_max_spans", "limits.max_depth", "templates.cpu_ms"):
        assert f"| `{key}` |" in text
    assert "`BASTION_GATEWAY__REDIS_PREFIX`" in text
    assert "`prices.<model>.input_usd_per_mtok`" in text
    assert "`projects.<slug>.prices.<model>.max_input_tokens`" in text
    assert "worker_index" not in text  # set by the process itself, not configurable


def test_check_flags_a_stale_file(tmp_path: Path) -> None:
    target = tmp_path / "settings.md"
    assert main([str(target), "--check"]) == 1
    assert main([str(target)]) == 0
    assert main([str(target), "--check"]) == 0
    target.write_text(render().replace("spans held in memory", "spans held"), encoding="utf-8")
    assert main([str(target), "--check"]) == 1
