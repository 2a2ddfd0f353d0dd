"""The package's public names change only on purpose."""

from __future__ import annotations

import bastion


def test_public_names_are_pinned() -> None:
    assert sorted(bastion.__all__) == [
        "Client",
        "ConfigError",
        "Settings",
        "__version__",
        "load_settings",
    ]


def test_every_public_name_exists() -> None:
    for name in bastion.__all__:
        assert hasattr(bastion, name), name
