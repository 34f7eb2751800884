"""Reading YAML with line numbers: each document becomes plain data plus a map from field path to line.

`yaml.safe_load_all` loses positions, and an error that says only "spec.ports[0].port" makes the
person hunt for it. We compose the node graph (SafeLoader), record the line of every mapping key and
sequence item under its field path (`spec.ports[0].port`), then construct plain Python data from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from steelyard.config.desired import ConfigError


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """One YAML document: its data, the file it came from, its first line and the line of each field."""

    file: str
    line: int
    data: Any
    lines: dict[str, int] = field(default_factory=dict)
    # Keys given twice in one mapping: (field path, line of the first, line of the second). YAML keeps the
    # last silently; Kubernetes' strict decoding refuses the object, and so does Steelyard.
    duplicates: tuple[tuple[str, int, int], ...] = ()

    def line_of(self, path: str) -> int:
        """The line of `path`, or of its closest recorded parent, or of the document."""
        probe = path
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return self.line


class _Loader(yaml.SafeLoader):
    """YAML 1.2's core schema for plain scalars, where PyYAML follows YAML 1.1:
    - booleans are only true/false (1.1 turns `on:`, the key of retries.on, and `no` into booleans);
    - integers are decimal, `0o17` or `0x1F` (1.1 reads `port: 010` as 8, `1_000` as 1000 and `1:30` as
      90; here the first is 10 and the others stay strings, which validation then refuses by name)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        return sign * int(digits, 10)


_OVERRIDDEN = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _OVERRIDDEN]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(  # (before float: "10" matches both, and is an integer)
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


MAX_NODES = 100_000  # nodes of one document once aliases are expanded
MAX_DEPTH = 200  # mappings and sequences nested in one another


class _TooLarge(Exception):
    """A document past MAX_NODES: an alias that refers to itself, or aliases nested into millions."""


def _record(root: yaml.Node, lines: dict[str, int], duplicates: list[tuple[str, int, int]]) -> None:
    """Each field path's line, and keys given twice; a walk with a budget, not a recursion (an alias that
    contains itself, or nests thousands deep, ends in an error, not a crash or a minutes-long walk)."""
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    visited = 0
    while stack:
        node, path, depth = stack.pop()
        visited += 1
        if visited > MAX_NODES or depth > MAX_DEPTH:
            raise _TooLarge
        children: list[tuple[yaml.Node, str, int]] = []
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key in first_seen:
                        duplicates.append((child, first_seen[key], line))
                    else:
                        first_seen[key] = line
                lines.setdefault(child, line)
                children.append((value_node, child, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                lines.setdefault(child, item.start_mark.line + 1)
                children.append((item, child, depth + 1))
        stack.extend(reversed(children))


def _problem_position(exc: yaml.YAMLError) -> tuple[int | None, int | None]:
    """(line, column), both counted from 1, of what the error points at."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if "quoted scalar" in (getattr(exc, "context", None) or ""):  # (unclosed: where it opens, not the end)
        mark = getattr(exc, "context_mark", None) or mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (None, None)


def _problem_text(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        return "YAML syntax error: " + (", ".join(parts) if parts else "invalid YAML")
    return f"YAML syntax error: {exc}"


def read_documents(name: str, text: str) -> tuple[list[SourceDocument], list[ConfigError]]:
    """Every non-empty document of `text`, or the syntax error that stopped reading (with its line)."""
    docs: list[SourceDocument] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[str, int] = {}
            duplicates: list[tuple[str, int, int]] = []
            try:
                _record(node, lines, duplicates)
                data = loader.construct_document(node)
            except (_TooLarge, RecursionError):
                return docs, [ConfigError(
                    f"the document from line {node.start_mark.line + 1} nests more than {MAX_DEPTH} levels "
                    f"deep or expands to more than {MAX_NODES:,} values through its aliases (one that "
                    "contains itself?)", file=name,
                    line=node.start_mark.line + 1)]
            if data is None:
                continue  # an empty document (`---` alone or comments only)
            docs.append(SourceDocument(name, node.start_mark.line + 1, data, lines, tuple(duplicates)))
    except yaml.YAMLError as exc:
        line, column = _problem_position(exc)
        return docs, [ConfigError(_problem_text(exc), file=name, line=line, column=column)]
    except RecursionError:  # (PyYAML composes nested collections recursively)
        return docs, [ConfigError(f"nests more than {MAX_DEPTH} levels deep", file=name)]
    finally:
        loader.dispose()
    return docs, []
