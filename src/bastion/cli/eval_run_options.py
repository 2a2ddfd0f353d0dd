"""The options of ``bastion eval run``, kept apart so that the command reads as its steps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunDatasetOption = Annotated[
    str | None, typer.Option("--dataset", "-d", help="NAME or NAME@VERSION (default newest)")
]
RunPromptOption = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="NAME, NAME@LABEL or NAME:VERSION; with a release --target, the pinned prompt",
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="release:ID|NAME, route:NAME@ENV, model:ALIAS or a prompt reference",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="gateway model alias (alone: items give input/messages)"),
]
ScorerOption = Annotated[
    list[str] | None, typer.Option("--scorer", help="scorer spec as JSON (repeatable)")
]
ScorersFileOption = Annotated[
    Path | None, typer.Option("--scorers", help="YAML file with a list of scorer specs")
]
RepeatsOption = Annotated[int, typer.Option(min=1, max=100)]
ConcurrencyOption = Annotated[int, typer.Option(min=1, max=1024)]
ResumeOption = Annotated[str | None, typer.Option("--resume", help="finish an interrupted run")]
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="call the model even for cached outputs")
]
GatewayOption = Annotated[
    str | None,
    typer.Option("--gateway", envvar="BASTION_GATEWAY_URL", help="gateway base URL"),
]
GatewayKeyOption = Annotated[
    str | None, typer.Option("--key", envvar="BASTION_API_KEY", help="gateway API key")
]
JudgeModelOption = Annotated[
    str | None,
    typer.Option("--judge-model", help="gateway model alias for LLM-as-judge scorers"),
]
RunConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="bastion.yaml, or a promptfoo config (promptfooconfig.yaml) to run",
    ),
]
ProviderMapOption = Annotated[
    list[str] | None,
    typer.Option("--provider-map", help="promptfoo: provider ID=gateway ALIAS (repeatable)"),
]
PassRateThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--pass-rate-threshold", min=0, max=100, help="promptfoo: exit 0 from this % passing"
    ),
]
