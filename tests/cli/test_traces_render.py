"""``bastion traces show``: a client's span of a gateway call says where the call is counted."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from bastion.cli.traces import render_tree


def _node(span_id: str, **fields: Any) -> dict[str, Any]:
    return {"span_id": span_id, "name": "chat chat", "latency_ms": 12.0, "status": "ok",
            "is_llm": True, "model": "sim-small", "input_tokens": 100, "output_tokens": 50,
            "cost_usd": 0.064, "children": [], **fields}  # fmt: skip


def test_a_duplicate_client_span_points_at_the_gateway_span() -> None:
    gateway = _node("9" * 16)
    client = _node("1" * 16, duplicate_of="9" * 16, children=[gateway])
    summary = {"name": "answer", "trace_id": "a" * 32, "latency_ms": 20.0, "total_tokens": 150,
               "cost_usd": 0.064}  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_tree({"trace": summary, "roots": [client]}))
    lines = console.export_text().splitlines()
    assert f"counted on gateway span {'9' * 16}" in lines[1]
    assert "$0.0640" not in lines[1]  # its cost is the gateway span's, shown once
    assert "100→50 tok $0.0640" in lines[2]
