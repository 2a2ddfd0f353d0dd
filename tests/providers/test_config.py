"""Gateway configuration: providers and model aliases from bastion.yaml, validated with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.providers.config import load_gateway_config
from bastion.settings import ConfigError, Settings, load_settings

ISSUE_EXAMPLE = """\
providers:
  openai: {type: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
  local:  {type: openai, base_url: http://127.0.0.1:9001/v1}
  claude: {type: anthropic, api_key_env: ANTHROPIC_API_KEY}
models:
  chat:
    deployments:
      - {provider: local, model: sim-small, weight: 3}
      - {provider: openai, model: gpt-4o-mini, weight: 1}
"""


def settings_from(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "bastion.yaml"
    path.write_text(text)
    return load_settings(path, home=tmp_path)


def test_documented_shape_loads_and_keys_come_from_the_environment(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, ISSUE_EXAMPLE)
    config = load_gateway_config(settings, environ={"OPENAI_API_KEY": "sk-from-env"})
    assert config.providers["openai"].api_key == "sk-from-env"
    assert config.providers["claude"].api_key is None  # variable not set
    assert config.providers["claude"].base_url == "https://api.anthropic.com"
    assert config.providers["local"].base_url == "http://127.0.0.1:9001/v1"
    chat = config.aliases["chat"]
    assert [(d.provider.name, d.model, d.weight) for d in chat.deployments] == [
        ("local", "sim-small", 3),
        ("openai", "gpt-4o-mini", 1),
    ]
    # The key never shows in a repr that could reach a log line.
    assert "sk-from-env" not in repr(config.providers["openai"])
    assert "sk-from-env" not in repr(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "providers:\n  p: {type: openai}\nmodels:\n  m:\n    deployments:\n"
            "      - {provider: q, model: x}\n",
            ["bastion.yaml:6: ", "models.m.deployments[0]", "unknown provider 'q'", "known: p"],
        ),
        (
            "providers:\n  p: {type: grpc}\n",
            ["bastion.yaml:2: ", "providers.p.type"],
        ),
        (
            "providers:\n  p:\n    type: openai\n    base_url: ftp://example.com\n",
            ["bastion.yaml:4: ", "providers.p.base_url", "http:// or https://"],
        ),
        (
            "providers:\n  p:\n    type: openai\n    base_url: https://user:pw@example.com/v1\n",
            ["providers.p.base_url", "must not carry credentials"],
        ),
        (
            "providers:\n  p:\n    type: openai\n    headers: {Authorization: Bearer sk-1}\n",
            ["providers.p.headers", "use api_key_env"],
        ),
        (
            "providers:\n  p:\n    type: openai\n    api_key: sk-plain\n",
            ["providers.p.api_key", "Extra inputs are not permitted"],
        ),
        (
            "providers:\n  p: {type: openai}\nmodels:\n  m:\n    deployments:\n"
            "      - {provider: p, model: x, weight: 0}\n",
            ["models.m.deployments.0.weight", "greater than 0"],
        ),
        (
            "providers:\n  p: {type: openai}\nmodels:\n  m: {deployments: []}\n",
            ["models.m.deployments", "at least 1"],
        ),
        ("providers: [a, b]\n", ["providers", "mapping"]),
    ],
)
def test_bad_config_names_the_key_and_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    settings = settings_from(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(settings, environ={})
    message = str(caught.value)
    for part in expected:
        assert part in message, message
    assert "sk-1" not in message
    assert "sk-plain" not in message
