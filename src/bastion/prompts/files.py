"""Prompt files: `<name>.prompt.yaml` and `<name>.prompt.md` to `PromptSpec` and back.

Every problem in a file is reported as `path:line: reason`, with the line of the offending key
(or, for a template problem, of the template line), so `bastion prompts push` in CI points a
reviewer at the exact place. Lines come from the YAML node tree (`yaml.compose` marks), mapped
from the key path that `PromptSpecError` and `TemplateError` carry.

A `.prompt.md` file is YAML front matter between `---` lines followed by a body, which becomes
the prompt's `text`: long completion prompts read better as Markdown than as a YAML string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from bastion.parsing import InputError, InputLimits, parse_yaml, read_bounded
from bastion.prompts.model import Path as KeyPath
from bastion.prompts.model import PromptSpec, PromptSpecError, format_path
from bastion.prompts.template import TemplateError, check_spec

__all__ = [
    "SUFFIXES",
    "PromptDirError",
    "PromptFileError",
    "dump_prompt_file",
    "load_prompt_dir",
    "load_prompt_file",
]

SUFFIXES = (".prompt.yaml", ".prompt.yml", ".prompt.md")


class PromptFileError(ValueError):
    """One invalid prompt file: `str()` is `"{path}:{line}: {reason}"` (no line when unknown)."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class PromptDirError(ValueError):
    """A directory held invalid prompt files; `errors` has every one, in path order."""

    def __init__(self, errors: list[PromptFileError]) -> None:
        self.errors = errors
        noun = "file" if len(errors) == 1 else "files"
        lines = "\n".join(f"  {error}" for error in errors)
        super().__init__(f"{len(errors)} invalid prompt {noun}:\n{lines}")


def prompt_stem(path: Path) -> str | None:
    """`summarize` for `summarize.prompt.yaml`; None when `path` is not a prompt file."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


# -- locating keys ------------------------------------------------------------------------------


class _Locator:
    """Key path -> 1-based file line, built from the composed YAML node tree."""

    def __init__(self, path: Path, root: yaml.Node, offset: int) -> None:
        self.file = path
        self.offset = offset  # lines before the YAML starts (front matter's `---`)
        self.root_line = root.start_mark.line + 1 + offset
        self.keys: dict[KeyPath, int] = {}
        self.values: dict[KeyPath, yaml.Node] = {}
        self.body_line: int | None = None  # first line of a .prompt.md body
        self._walk(root, ())

    def _walk(self, node: yaml.Node, path: KeyPath) -> None:
        # No node is visited twice: the YAML reader refuses aliases, so the tree is a tree.
        if isinstance(node, yaml.MappingNode):
            children: Iterator[tuple[str | int, yaml.Node, yaml.Node]] = (
                (k.value if isinstance(k, yaml.ScalarNode) else repr(k.value), k, v)
                for k, v in node.value
            )
        elif isinstance(node, yaml.SequenceNode):
            children = ((i, item, item) for i, item in enumerate(node.value))
        else:
            return
        for key, key_node, value in children:
            child = (*path, key)
            if child in self.keys:
                where = format_path(child)
                raise PromptFileError(self.file, self._line(key_node), f"{where}: duplicate key")
            self.keys[child] = self._line(key_node)
            self.values[child] = value
            self._walk(value, child)

    def _line(self, node: yaml.Node) -> int:
        return int(node.start_mark.line) + 1 + self.offset

    def line(self, path: KeyPath) -> int:
        """The line of the deepest key of `path` the file has (the document start for none)."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.keys:
                return self.keys[path[:end]]
        return self.root_line

    def template_line(self, location: KeyPath | None, lineno: int | None) -> int:
        """The file line of line `lineno` of the template at `location`."""
        if location is None:
            return self.root_line
        if location == ("text",) and self.body_line is not None:
            return self.body_line + (lineno or 1) - 1
        node = self.values.get(location)
        if node is None:
            return self.line(location)
        if isinstance(node, yaml.ScalarNode) and node.style == "|" and lineno is not None:
            return self._line(node) + lineno  # content starts the line after the `|`
        return self._line(node)  # folded or quoted: YAML joins lines, so the scalar's start


# -- loading ------------------------------------------------------------------------------------


def load_prompt_file(path: Path) -> PromptSpec:
    """Parse and validate one prompt file; any problem raises `PromptFileError` (file:line)."""
    return _load(path)[0]


def _load(path: Path) -> tuple[PromptSpec, int]:
    stem = prompt_stem(path)
    if stem is None:
        raise PromptFileError(path, None, f"not a prompt file (expected {', '.join(SUFFIXES)})")
    try:
        source = read_bounded(path, InputLimits())
    except InputError as exc:
        raise PromptFileError(path, None, exc.problem) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(path, None, f"cannot read: {exc}") from None
    body: tuple[str, int] | None = None
    offset = 0
    if path.name.endswith(".md"):
        source, body = _split_front_matter(path, source)
        source = source if source.strip() else "{}"  # `name` may come from the file name alone
        offset = 1
    data, locator = _parse_yaml(path, source, offset)
    if body is not None:
        for key in ("text", "messages"):
            if key in data:
                reason = f"{key}: not allowed in a .prompt.md file (the body is the text)"
                raise PromptFileError(path, locator.line((key,)), reason)
        data["text"], locator.body_line = body
    data.setdefault("name", stem)  # the file name already says it
    try:
        spec = PromptSpec.from_dict(data)
    except PromptSpecError as exc:
        raise PromptFileError(path, locator.line(exc.path), str(exc)) from None
    name_line = locator.line(("name",))
    if spec.name != stem:
        reason = f"name: '{spec.name}' does not match the file name (expected '{stem}')"
        raise PromptFileError(path, name_line, reason)
    try:
        check_spec(spec, None)  # which partials exist is the registry's knowledge, not the file's
    except TemplateError as exc:
        line = locator.template_line(exc.location, exc.lineno)
        raise PromptFileError(path, line, str(exc)) from None
    return spec, name_line


def _split_front_matter(path: Path, source: str) -> tuple[str, tuple[str, int]]:
    """(front matter YAML, (body, first body line)) of a `.prompt.md` file."""
    lines = source.split("\n")
    if lines[0].rstrip() != "---":
        reason = "a .prompt.md file starts with YAML front matter between '---' lines"
        raise PromptFileError(path, 1, reason)
    for end in range(1, len(lines)):
        if lines[end].rstrip() == "---":
            break
    else:
        raise PromptFileError(path, 1, "front matter is not closed by a '---' line")
    rest = lines[end + 1 :]
    skipped = 0
    while skipped < len(rest) and not rest[skipped].strip():
        skipped += 1  # blank lines between the front matter and the body are layout
    body = "\n".join(rest[skipped:]).rstrip()
    return "\n".join(lines[1:end]), (body, end + 2 + skipped)


def _parse_yaml(path: Path, source: str, offset: int) -> tuple[dict[str, Any], _Locator]:
    try:
        document = parse_yaml(source)
    except InputError as exc:
        line = None if exc.line is None else exc.line + offset
        raise PromptFileError(path, line, exc.problem) from None
    if document.node is None:
        raise PromptFileError(path, 1 + offset, "empty file: expected a mapping")
    locator = _Locator(path, document.node, offset)
    data = document.data
    if not isinstance(data, dict):
        raise PromptFileError(path, locator.root_line, "expected a mapping at the top level")
    return data, locator


def load_prompt_dir(directory: Path) -> list[PromptSpec]:
    """Every prompt file under `directory` (recursive, hidden folders skipped), sorted by name.

    All files are read before failing: `PromptDirError.errors` lists every invalid file, every
    name that does not match its file, and every name declared by two files.
    """
    if not directory.is_dir():
        raise PromptDirError([PromptFileError(directory, None, "not a directory")])
    paths = sorted(
        path
        for path in directory.rglob("*.prompt.*")
        if prompt_stem(path) is not None
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts[:-1])
    )
    errors: list[PromptFileError] = []
    found: dict[str, tuple[PromptSpec, Path]] = {}
    for path in paths:
        try:
            spec, name_line = _load(path)
        except PromptFileError as exc:
            errors.append(exc)
            continue
        if spec.name in found:
            other = found[spec.name][1]
            reason = f"name: duplicate prompt name '{spec.name}' (also declared in {other})"
            errors.append(PromptFileError(path, name_line, reason))
            continue
        found[spec.name] = (spec, path)
    if errors:
        raise PromptDirError(errors)
    return [found[name][0] for name in sorted(found)]


# -- dumping ------------------------------------------------------------------------------------


class _Flow(dict[str, Any]):
    """A mapping written on one line: `{type: string, default: neutral}`."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line templates as `|` blocks, so a prompt reads like the text it is.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _represent_flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.MappingNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Flow, _represent_flow)


def _flow_if_flat(data: Mapping[str, Any]) -> dict[str, Any]:
    flat = all(
        not isinstance(v, dict | list) and not (isinstance(v, str) and ("\n" in v or len(v) > 60))
        for v in data.values()
    )
    return _Flow(data) if flat else dict(data)


def dump_prompt_file(spec: PromptSpec) -> str:
    """The spec as `.prompt.yaml` text that `load_prompt_file` reads back to an equal spec.

    Keys in reading order (name, description, model, params, variables, messages/text, tools,
    response_format, metadata), short mappings on one line, multi-line strings as `|` blocks.
    """
    data = spec.to_dict()
    if "params" in data:
        data["params"] = _flow_if_flat(data["params"])
    if "variables" in data:
        data["variables"] = {k: _flow_if_flat(v) for k, v in data["variables"].items()}
    text = yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,  # never fold a long line of prompt text across lines
    )
    return str(text)
