"""What a template's source shows about its cost before it runs: nesting and constant sizes.

Jinja's parser and compiler recurse once (or a dozen Python frames) per level of nesting, so a
5,000-deep parenthesis would end in a ``RecursionError`` instead of an answer. The brackets are
counted on the token stream first (no recursion) and a source nested deeper than
``PARSE_SAFE_DEPTH`` is never parsed; after parsing, the tree's depth is measured iteratively
before anything walks it recursively. Loops count separately: Python refuses a function with
more than 20 nested loop blocks, and each ``{% for %}`` and ``{% include %}`` compiles to one.

Constant expressions are sized too, so ``{{ "a" * 10**9 }}`` is refused when it is pushed, not
when it first renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import Environment, nodes

from bastion.prompts.template_guards import MAX_EXPONENT, MAX_INDENT, MAX_INT_BITS

__all__ = [
    "MAX_LOOP_NESTING",
    "PARSE_SAFE_DEPTH",
    "Shape",
    "bracket_depth",
    "measure",
    "shape_problem",
]

MAX_LOOP_NESTING = 16
PARSE_SAFE_DEPTH = 64  # above the largest templates.max_nesting; what the parser handles safely
_HUGE = 1 << 62  # a constant too large to compute: larger than any limit
_PADDING = frozenset({"center", "ljust", "rjust", "zfill"})
_OPEN = frozenset("([{")
_CLOSE = frozenset(")]}")


@dataclass(frozen=True, slots=True)
class Shape:
    """How deep a template nests and the largest thing its constants build (with lines)."""

    depth: int
    depth_line: int
    loops: int = 0
    loops_line: int = 0
    constant_size: int = 0
    constant_line: int = 0
    constant_what: str = ""
    forbidden: tuple[str, int] | None = None  # a constant construct the sandbox refuses


def bracket_depth(environment: Environment, source: str) -> tuple[int, int]:
    """The deepest bracket nesting in ``source``'s tags and the line it is on (no parsing)."""
    depth = deepest = 0
    line = 1
    for lineno, kind, value in environment.lex(source):
        if kind != "operator":
            continue
        if value in _OPEN:
            depth += 1
            if depth > deepest:
                deepest, line = depth, lineno
        elif value in _CLOSE:
            depth -= 1
    return deepest, line


def measure(ast: nodes.Template, brackets: tuple[int, int] = (0, 1)) -> Shape:
    """Depth, loop nesting and the largest constant of a parsed template, iteratively.

    Parentheses leave no node behind, so ``brackets`` (from :func:`bracket_depth`) is the
    depth when it is the larger.
    """
    depth = brackets
    loops = (0, 1)
    stack: list[tuple[nodes.Node, int, int]] = [(ast, 0, 0)]
    while stack:
        node, level, loop_level = stack.pop()
        line = node.lineno or 1
        if isinstance(node, nodes.For | nodes.Include):
            loop_level += 1
            if loop_level > loops[0]:
                loops = (loop_level, line)
        if level > depth[0]:
            depth = (level, line)
        stack.extend((child, level + 1, loop_level) for child in node.iter_child_nodes())
    if depth[0] > PARSE_SAFE_DEPTH:
        return Shape(depth[0], depth[1], loops[0], loops[1])
    size, size_line, what = 0, 1, ""
    forbidden: tuple[str, int] | None = None
    for node in ast.find_all(nodes.Expr):
        found = _constant_cost(node)
        if isinstance(found, str):
            forbidden = forbidden or (found, node.lineno)
        elif found is not None and found[0] > size:
            size, size_line, what = found[0], node.lineno, found[1]
    return Shape(depth[0], depth[1], loops[0], loops[1], size, size_line, what, forbidden)


def shape_problem(shape: Shape, max_nesting: int, max_size: int) -> tuple[str, str, int] | None:
    """(reason, limit, line) for the first limit ``shape`` is past, else None."""
    if shape.depth > max_nesting:
        reason = f"expressions and blocks nested deeper than {max_nesting} levels"
        return f"{reason} (templates.max_nesting)", "nesting", shape.depth_line
    if shape.loops > MAX_LOOP_NESTING:
        reason = f"loops and includes nested deeper than {MAX_LOOP_NESTING} levels"
        return reason, "nesting", shape.loops_line
    if shape.constant_size > max_size:
        reason = f"{shape.constant_what} builds more than the {max_size:,} characters or items"
        return (
            f"{reason} a template may (templates.max_output_bytes)",
            "memory",
            shape.constant_line,
        )
    return None


def _constant_cost(node: nodes.Expr) -> tuple[int, str] | str | None:
    """(size, what) a constant expression would build, a reason it is refused, or None."""
    if isinstance(node, nodes.Mul | nodes.Add):
        size = _sized(node)
        return None if size is None else (size, f"'{node.operator}'")
    if isinstance(node, nodes.Pow):
        base, exponent = _int(node.left), _int(node.right)
        if exponent is None:
            return None
        if abs(exponent) > MAX_EXPONENT:
            return f"exponent larger than {MAX_EXPONENT}"
        if base is not None and exponent > 0 and base.bit_length() * exponent > MAX_INT_BITS:
            return (_HUGE, "'**' (an integer of more than 4,300 digits)")
        return None
    formatted = node.left if isinstance(node, nodes.Mod) else None
    if isinstance(formatted, nodes.Const) and isinstance(formatted.value, str):
        return "string formatting with '%' is not allowed"
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
        width = _int(node.args[0]) if node.args else None
        if node.node.attr in _PADDING and width is not None:
            return (width, f"'.{node.node.attr}()'")
    if isinstance(node, nodes.Filter) and node.name == "indent" and node.args:
        width = _int(node.args[0])
        if width is not None and width > MAX_INDENT:
            return f"indent wider than {MAX_INDENT}"
    return None


def _int(node: nodes.Node) -> int | None:
    """The value of a constant integer expression (``_HUGE`` past 62 bits), else None."""
    if isinstance(node, nodes.Const):
        value = node.value
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(node, nodes.Neg | nodes.Pos):
        inner = _int(node.node)
        return None if inner is None else (-inner if isinstance(node, nodes.Neg) else inner)
    if not isinstance(node, nodes.Pow | nodes.Mul | nodes.Add | nodes.Sub):
        return None
    left, right = _int(node.left), _int(node.right)
    if left is None or right is None:
        return None
    if isinstance(node, nodes.Add | nodes.Sub):
        value = left + right if isinstance(node, nodes.Add) else left - right
    elif isinstance(node, nodes.Mul):
        bits = left.bit_length() + right.bit_length()
        value = _HUGE if bits > 62 else left * right
    else:
        if right < 0:
            return None
        bits = left.bit_length() * right
        value = _HUGE if bits > 62 else int(left**right)
    return max(min(value, _HUGE), -_HUGE)


def _sized(node: nodes.Node) -> int | None:
    """The length of a constant string or list expression (literals, `*`, `+`), else None."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str | bytes):
        return len(node.value)
    if isinstance(node, nodes.List | nodes.Tuple):
        return len(node.items)
    if isinstance(node, nodes.Mul):
        for seq, count in ((node.left, node.right), (node.right, node.left)):
            length, times = _sized(seq), _int(count)
            if length is not None and times is not None:
                return min(length * max(times, 0), _HUGE)
        return None
    if isinstance(node, nodes.Add):
        left, right = _sized(node.left), _sized(node.right)
        return None if left is None or right is None else left + right
    return None
