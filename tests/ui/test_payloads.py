"""Payloads made readable: every known shape of chat messages becomes a conversation, with
tool calls and results; other JSON a tree; anything else text."""

from __future__ import annotations

import orjson

from bastion.ui.payloads import MAX_DEPTH, MAX_ITEMS, read_payload


def _dump(value: object) -> str:
    return orjson.dumps(value).decode()


def test_an_openai_request_and_response() -> None:
    request = read_payload(
        _dump(
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi"},
                            {"type": "image_url", "image_url": {"url": "x"}},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
                ],
            }
        )
    )
    assert request.kind == "conversation"
    assert [m.style for m in request.messages] == ["system", "user", "assistant", "tool"]
    user = request.messages[1].parts
    assert (user[0].kind, user[0].text, user[1].kind) == ("text", "hi", "json")
    call = request.messages[2].parts[0]
    assert (call.kind, call.name, call.call_id) == ("tool_call", "f", "c1")
    assert call.value is not None
    assert call.value.children[0].text == "1"
    result = request.messages[3].parts[0]
    assert (result.kind, result.call_id) == ("tool_result", "c1")
    assert request.extras is not None
    assert request.extras.children[0].key == "model"
    response = read_payload(
        _dump({"choices": [{"message": {"role": "assistant", "content": "yo"}}]})
    )
    assert response.kind == "conversation"
    assert response.messages[0].parts[0].text == "yo"


def test_anthropic_and_opentelemetry_shapes() -> None:
    anthropic = read_payload(
        _dump(
            {
                "system": [{"type": "text", "text": "rules"}],
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t1",
                                "content": [{"type": "text", "text": "42"}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    assert [m.style for m in anthropic.messages] == ["system", "user"]
    assert anthropic.messages[1].parts[0].kind == "tool_result"
    assert anthropic.messages[1].parts[0].text == "42"
    answer = read_payload(
        _dump(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t2", "name": "search", "input": {"q": "x"}}
                ],
            }
        )
    )
    assert answer.messages[0].parts[0].name == "search"
    semconv = read_payload(
        _dump(
            [
                {"role": "user", "parts": [{"type": "text", "content": "hello"}]},
                {
                    "role": "assistant",
                    "parts": [{"type": "tool_call", "id": "1", "name": "f", "arguments": {}}],
                },
            ]
        )
    )
    assert semconv.messages[0].parts[0].text == "hello"
    assert semconv.messages[1].parts[0].kind == "tool_call"


def test_json_text_and_edges() -> None:
    assert read_payload(None).kind == "empty"
    assert read_payload("").kind == "empty"
    assert read_payload("just words").kind == "text"
    assert read_payload('{"cut": "in the mid').kind == "text"  # stored at its length cap
    tree = read_payload(_dump({"a": [1, 2, {"b": None}]}))
    assert tree.kind == "json"
    assert tree.json is not None
    assert tree.json.size == 1
    deep: object = "bottom"
    for _ in range(MAX_DEPTH + 5):
        deep = {"x": deep}
    node = read_payload(_dump(deep)).json
    depth = 0
    while node is not None and node.kind == "object":
        node, depth = node.children[0], depth + 1
    assert node is not None
    assert node.kind == "raw"
    assert depth == MAX_DEPTH
    many = read_payload(_dump(list(range(MAX_ITEMS + 7)))).json
    assert many is not None
    assert len(many.children) == MAX_ITEMS
    assert many.hidden == 7
    assert read_payload("x" * 5000).folds
