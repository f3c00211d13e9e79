"""YAML with line numbers, and `${...}` interpolation.

`load()` parses a dataflow file into plain Python values and a map from each YAML path
(a tuple of keys and indexes) to the line it starts on, so that every later problem can be
reported as ``file:line: yaml.path: message``. Duplicate keys are problems, not silent
overwrites.

Interpolation, applied to every string scalar:

- ``${NAME}``: the environment variable NAME; missing is a problem at that path;
- ``${NAME:-default}``: NAME, or ``default`` when NAME is unset or empty;
- ``${file:PATH}``: the content of a file, PATH relative to the dataflow file;
- ``$${`` escapes a literal ``${``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataflow.errors import ConfigProblem

YamlPath = tuple[str | int, ...]

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(path: YamlPath) -> str:
    """``("blocks", 2, "mapping")`` -> ``blocks[2].mapping``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top)"


@dataclass
class Document:
    """A parsed dataflow file: its values, the line of every path, and problems found."""

    file: str
    data: Any
    lines: dict[YamlPath, int] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)
    interpolated: set[YamlPath] = field(default_factory=set)
    failed: set[YamlPath] = field(default_factory=set)  # paths whose ${...} failed

    def line_of(self, path: YamlPath) -> int:
        """The line of `path`, or of its nearest ancestor that appears in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1

    def problem(self, path: YamlPath, message: str) -> None:
        """Record a problem at `path` (reported with the line it starts on)."""
        self.problems.append(
            ConfigProblem(self.file, self.line_of(path), format_path(path), message)
        )


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Document:
    """Parse and interpolate one dataflow file. Problems are collected, never raised."""
    display = str(path)
    doc = Document(file=display, data=None)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        doc.problems.append(ConfigProblem(display, 1, "(file)", f"cannot read: {exc}"))
        return doc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        doc.problems.append(ConfigProblem(display, line, "(yaml)", f"invalid YAML: {reason}"))
        return doc
    if node is None:
        doc.problems.append(ConfigProblem(display, 1, "(top)", "the file is empty"))
        return doc
    doc.data = _construct(node, (), doc)
    _interpolate_tree(doc, Path(path).resolve().parent, os.environ if env is None else env)
    return doc


_constructor = yaml.SafeLoader("")  # only its constructor is used, on composed nodes


def _construct(node: yaml.Node, path: YamlPath, doc: Document) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _constructor.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int)):
                key = str(key)
            child = (*path, key)
            if key in out:
                doc.problems.append(
                    ConfigProblem(
                        doc.file, key_node.start_mark.line + 1, format_path(child), "duplicate key"
                    )
                )
                continue
            doc.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), doc) for i, item in enumerate(node.value)]
    return _constructor.construct_object(node, deep=True)


def _interpolate_tree(doc: Document, base: Path, env: Mapping[str, str]) -> None:
    def walk(value: Any, path: YamlPath) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _interpolate(value, path, doc, base, env)
        return value

    doc.data = walk(doc.data, ())


def _interpolate(
    text: str, path: YamlPath, doc: Document, base: Path, env: Mapping[str, str]
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        doc.interpolated.add(path)
        ref = match.group(1)
        if ref.startswith("file:"):
            target = (base / ref[5:].strip()).resolve()
            try:
                return target.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                doc.problem(path, f"${{file:{ref[5:].strip()}}}: cannot read {target}: {reason}")
                doc.failed.add(path)
                return ""
        name, sep, default = ref.partition(":-")
        if not _NAME.fullmatch(name):
            doc.problem(
                path,
                f"'${{{ref}}}' is not a valid reference; use ${{NAME}}, "
                "${NAME:-default} or ${file:PATH}",
            )
            doc.failed.add(path)
            return ""
        value = env.get(name)
        if sep and not value:
            return default
        if value is None:
            doc.problem(path, f"environment variable {name} is not set")
            doc.failed.add(path)
            return ""
        return value

    return _REF.sub(replace, text)
