"""Reading promptfoo configs: prompts, providers, tests from files, CSV ``__expected``
columns, defaultTest, scenarios, var files and expansion, unsupported keys and filters."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bastion.evals.promptfoo.cases import assertion_from_string
from bastion.evals.promptfoo.config import is_promptfoo_config, load_suite, parse_provider_map
from bastion.evals.promptfoo.loading import PromptfooError
from bastion.evals.promptfoo.templating import render_prompt
from bastion.prompts import TemplateError


def write(folder: Path, config: str, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    path = folder / "promptfooconfig.yaml"
    path.write_text(textwrap.dedent(config))
    return path


def problems_of(path: Path) -> str:
    with pytest.raises(PromptfooError) as caught:
        load_suite(path)
    return str(caught.value)


def test_prompts_from_strings_text_files_chat_json_and_globs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        prompts:
          - "Inline {{ x }}"
          - file://prompts/*.txt
          - file://chat.json
          - {raw: "Raw {{ x }}", label: raw-one}
        providers: [echo]
        tests: [{vars: {x: "1"}}]
        """,
        {
            "prompts/a.txt": "First {{ x }}\n---\nSecond {{ x }}\n",
            "prompts/b.txt": "Third {{ x }}",
            "chat.json": '[{"role": "system", "content": "sys"}, '
            '{"role": "user", "content": "Hi {{ x | upper }}"}]',
        },
    )
    suite = load_suite(path)
    labels = [p.label for p in suite.prompts]
    assert labels == ["Inline {{ x }}", "a.txt:1", "a.txt:2", "b.txt", "chat.json", "raw-one"]
    assert suite.prompts[2].text == "Second {{ x }}"
    chat = suite.prompts[4]
    assert chat.messages is not None
    rendered = render_prompt(chat.source, {"x": "there"})
    assert rendered == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Hi THERE"},
    ]
    assert render_prompt(suite.prompts[1].source, {"x": 5}) == [
        {"role": "user", "content": "First 5"}
    ]


def test_provider_ids_map_to_gateway_aliases(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        prompts: ["p"]
        providers:
          - openai:gpt-4o-mini
          - id: openai:chat:my-model
            label: mine
            config: {temperature: 0.2, max_tokens: 20, apiKey: sk-not-used}
          - anthropic:messages:claude-x
          - vertex:gemini-pro
          - bastion:local
          - echo
          - custom-id: {config: {seed: 3}}
        tests: [{vars: {}}]
        bastion:
          providers: {custom-id: aliased}
        """,
    )
    suite = load_suite(path, provider_map=parse_provider_map(["vertex:gemini-pro=gemini"]))
    got = [(p.label, p.kind, p.model, dict(p.params)) for p in suite.providers]
    assert got == [
        ("openai:gpt-4o-mini", "gateway", "gpt-4o-mini", {}),
        ("mine", "gateway", "my-model", {"temperature": 0.2, "max_tokens": 20}),
        ("anthropic:messages:claude-x", "gateway", "claude-x", {}),
        ("vertex:gemini-pro", "gateway", "gemini", {}),
        ("bastion:local", "gateway", "local", {}),
        ("echo", "echo", None, {}),
        ("custom-id", "gateway", "aliased", {"seed": 3}),
    ]
    assert any("'apiKey'" in w for w in suite.warnings)
    message = problems_of(path)
    assert "unknown provider type 'vertex'" in message
    with pytest.raises(PromptfooError, match="ID=ALIAS"):
        parse_provider_map(["no-equals-sign"])


def test_unsupported_keys_are_errors_and_harmless_ones_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        description: d
        sharing: false
        outputPath: out.json
        prompts: ["p {{ x }}"]
        providers: [{id: echo, transform: "x", prompts: [a]}]
        extensions: [file://hooks.js]
        nunjucksFilters: {shout: file://shout.js}
        defaultTest:
          options: {transform: output.trim(), runSerially: true}
        tests:
          - vars: {x: "1"}
            providerOutput: fixed
            assert: [{type: contains, value: p, transform: output.toUpperCase()}]
        """,
    )
    message = problems_of(path)
    for name in ("'extensions'", "'nunjucksFilters'", "'transform'", "'prompts'",
                 "'providerOutput'"):  # fmt: skip
        assert name in message, name
    assert "defaultTest.options: unsupported key(s) 'transform'" in message
    assert "'sharing'" not in message
    ok = write(
        tmp_path / "ok",
        """
        sharing: false
        outputPath: out.json
        prompts: ["p"]
        providers: [echo]
        tests: [{vars: {}}]
        """,
    )
    suite = load_suite(ok)
    assert any("'outputPath', 'sharing'" in w for w in suite.warnings)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("Paris", {"type": "equals", "value": "Paris"}),
        ("contains: foo", {"type": "contains", "value": "foo"}),
        ("not-icontains:BAR", {"type": "not-icontains", "value": "BAR"}),
        ("contains-any: a, b ,c", {"type": "contains-any", "value": ["a", "b", "c"]}),
        ("icontains-all:x,y", {"type": "icontains-all", "value": ["x", "y"]}),
        ("regex: ^\\d+$", {"type": "regex", "value": "^\\d+$"}),
        ("starts-with: Yes", {"type": "starts-with", "value": "Yes"}),
        ("is-json", {"type": "is-json"}),
        ("similar(0.9): hello", {"type": "similar", "value": "hello", "threshold": 0.9}),
        ("similar: hello", {"type": "similar", "value": "hello", "threshold": 0.8}),
        ("levenshtein(3): abc", {"type": "levenshtein", "value": "abc", "threshold": 3.0}),
        ("rouge-n: a b c", {"type": "rouge-n", "value": "a b c", "threshold": 0.75}),
        ("grade: is polite", {"type": "llm-rubric", "value": "is polite"}),
        ("llm-rubric: is kind", {"type": "llm-rubric", "value": "is kind"}),
        ("javascript: output.length > 3", {"type": "javascript", "value": "output.length > 3"}),
        ("fn: output === 'a'", {"type": "javascript", "value": "output === 'a'"}),
        ("python: len(output) > 3", {"type": "python", "value": "len(output) > 3"}),
        ("file://check.py:grade", {"type": "python", "value": "file://check.py:grade"}),
        ("file://check.js", {"type": "javascript", "value": "file://check.js"}),
        ("answer-relevance: x", {"type": "answer-relevance", "value": "x"}),
        ("contains:", {"type": "contains", "value": ""}),
    ],
)
def test_expected_cells_parse_like_promptfoo(cell: str, expected: dict[str, object]) -> None:
    assert assertion_from_string(cell) == expected


def test_csv_tests_with_expected_columns_and_reserved_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        prompts: ["{{ q }}"]
        providers: [echo]
        tests: file://data/*.csv
        """,
        {
            "data/a.csv": (
                "q,__expected,__expected2,__description,__threshold,__metric,__metadata:tags[]\n"
                '"Q, one",contains: one,not-contains: two,first,0.5,acc,"x,y"\n'
                "Q two,Q two,,second,,,\n"
            ),
        },
    )
    suite = load_suite(path)
    first, second = suite.tests
    assert first.vars == {"q": "Q, one"}
    assert first.description == "first"
    assert first.threshold == 0.5
    assert first.metadata == {"tags": ["x", "y"]}
    assert first.asserts == (
        {"type": "contains", "value": "one", "metric": "acc"},
        {"type": "not-contains", "value": "two", "metric": "acc"},
    )
    assert second.asserts == ({"type": "equals", "value": "Q two"},)
    assert second.threshold is None
    bad = write(tmp_path / "bad", "prompts: [p]\nproviders: [echo]\ntests: file://t.csv\n",
                {"t.csv": "q,__weird\n1,2\n"})  # fmt: skip
    assert "unsupported CSV column '__weird'" in problems_of(bad)


def test_tests_from_jsonl_and_yaml_with_vars_from_files(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        prompts: ["{{ doc }} / {{ n }}"]
        providers: [echo]
        tests:
          - file://more.jsonl
          - file://more.yaml
          - vars: file://vars.yaml
        """,
        {
            "more.jsonl": '{"vars": {"doc": "file://doc.txt", "n": 1}}\n\n'
            '{"vars": {"doc": "j2", "n": 2}, "assert": [{"type": "equals", "value": "x"}]}\n',
            "more.yaml": "- vars: {doc: y1, n: 3, flag: no}\n",
            "vars.yaml": "doc: from-file\nn: 4\n",
            "doc.txt": "a document",
        },
    )
    suite = load_suite(path)
    assert [dict(t.vars) for t in suite.tests] == [
        {"doc": "a document", "n": 1},
        {"doc": "j2", "n": 2},
        {"doc": "y1", "n": 3, "flag": "no"},  # YAML 1.2 as promptfoo reads it: "no" is text
        {"doc": "from-file", "n": 4},
    ]
    code = write(tmp_path / "code", "prompts: [p]\nproviders: [echo]\n"
                 "tests: [{vars: {x: file://gen.py}}]\n", {"gen.py": "x = 1\n"})  # fmt: skip
    assert "vars computed by .py files are not supported" in problems_of(code)


def test_default_test_scenarios_and_array_vars_expand(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        prompts: ["{{ lang }} {{ word }}"]
        providers: [echo]
        defaultTest:
          vars: {lang: en, word: default}
          assert: [{type: contains, value: "{{ word }}"}]
          threshold: 0.5
          options: {provider: openai:chat:judge}
        tests:
          - vars: {word: hi}
            assert: [{type: icontains, value: HI}]
          - vars: {word: [a, b]}
            threshold: 0.9
        scenarios:
          - description: langs
            config:
              - vars: {lang: fr}
              - vars: {lang: de}
                assert: [{type: starts-with, value: de}]
            tests:
              - description: greet
                vars: {word: hallo}
              - vars: {word: tschuess}
        """,
    )
    tests = load_suite(path).tests
    assert [dict(t.vars) for t in tests] == [
        {"lang": "en", "word": "hi"},
        {"lang": "en", "word": "a"},
        {"lang": "en", "word": "b"},
        {"lang": "fr", "word": "hallo"},
        {"lang": "fr", "word": "tschuess"},
        {"lang": "de", "word": "hallo"},
        {"lang": "de", "word": "tschuess"},
    ]
    assert [t.asserts[-1]["type"] for t in tests] == [
        "icontains", "contains", "contains", "contains", "contains", "starts-with", "starts-with"
    ]  # fmt: skip
    assert tests[0].asserts[0] == {"type": "contains", "value": "{{ word }}"}
    assert [t.threshold for t in tests[:3]] == [0.5, 0.9, 0.9]
    assert tests[3].description == "langs / greet"
    assert tests[0].options == {"provider": "openai:chat:judge"}
    assert [t.index for t in tests] == list(range(7))


def test_templates_nunjucks_filters_and_missing_vars(tmp_path: Path) -> None:
    assert render_prompt("{{ x | safe }} {{ y | dump }} {{ z }}",
                         {"x": "<b>", "y": {"k": 1}, "z": None}) == [
        {"role": "user", "content": '<b> {"k": 1} '}
    ]  # fmt: skip
    with pytest.raises(TemplateError, match=r"uses \{\{ missing \}\}"):
        render_prompt("{{ missing }}", {})
    with pytest.raises(TemplateError, match="forbidden"):
        render_prompt("{{ x.__class__ }}", {"x": "a"})
    path = write(
        tmp_path,
        """
        prompts: ["{{ a | striptags }} {{ b | nl2br }} {{ c | shout }} {{ d | title }}"]
        providers: [echo]
        tests: [{vars: {a: x, b: y, c: z, d: w}}]
        """,
    )
    message = problems_of(path)
    assert "Nunjucks filter 'striptags'" in message
    assert "Nunjucks filter 'nl2br'" in message
    assert "unknown filter 'shout'" in message
    assert "'title'" not in message


def test_bastion_yaml_is_not_mistaken_for_a_promptfoo_config(tmp_path: Path) -> None:
    bastion_yaml = tmp_path / "bastion.yaml"
    bastion_yaml.write_text("providers:\n  sim: {type: openai}\nprompts: {dir: prompts}\n")
    assert not is_promptfoo_config(bastion_yaml)
    promptfoo = write(tmp_path / "pf", "prompts: [p]\nproviders: [echo]\ntests: [{}]\n")
    assert is_promptfoo_config(promptfoo)
    assert not is_promptfoo_config(tmp_path / "absent.yaml")


def test_missing_sections_and_files_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: [echo]\ntests: [file://nope.csv, 3]\n")
    message = problems_of(path)
    assert "'prompts' is required" in message
    assert "nope.csv" in message
    assert "a test must be a mapping or a file reference" in message


def test_vars_that_are_not_identifiers_reach_assertions_not_templates() -> None:
    assert render_prompt("Hi {{ name }}", {"name": "Ann", "my-var": 1, "_hidden": 2}) == [
        {"role": "user", "content": "Hi Ann"}
    ]
    with pytest.raises(TemplateError):
        render_prompt("Hi {{ _hidden }}", {"_hidden": 2})
