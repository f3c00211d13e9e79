"""YAML with line numbers, and `${...}` interpolation.

`load()` parses a dataflow file into plain Python values and a map from each YAML path
(a tuple of keys and indexes) to the line it starts on, so that every later problem can be
reported as ``file:line: yaml.path: message``. Duplicate keys are problems, not silent
overwrites.

Interpolation, applied to every string scalar:

- ``${NAME}``: the environment variable NAME; missing is a problem at that path;
- ``${NAME:-default}``: NAME, or ``default`` when NAME is unset or empty;
- ``${file:PATH}``: the content of a file (one trailing newline removed), PATH relative to
  the dataflow file; the content is registered with `dataflow.redact` as a secret, whatever
  key it lands in (a hostname read from a file is never printed);
- ``$${`` escapes a literal ``${``; an unclosed ``${`` is a problem.

A hostile file cannot hang or crash the loader: the file is at most `MAX_FILE_BYTES`, nesting
at most `MAX_DEPTH` levels, aliases expand to at most `MAX_ALIAS_NODES` values (a "billion
laughs" file is refused at its first alias over the bound), and an alias inside its own anchor,
an unknown tag or an impossible value (``2026-02-30``) is a problem at its line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataflow import redact
from dataflow.errors import ConfigProblem

YamlPath = tuple[str | int, ...]

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")  # the last: an unclosed ${
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
    text = _read_text(Path(path), MAX_FILE_BYTES, "the file", doc)
    if text is None:
        return doc
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        line, message = _yaml_problem(exc, text)
        doc.problems.append(ConfigProblem(display, line, "(yaml)", f"invalid YAML: {message}"))
        return doc
    if node is None:
        doc.problems.append(ConfigProblem(display, 1, "(top)", "the file is empty"))
        return doc
    doc.data = _construct(node, (), doc, yaml.SafeLoader(""))
    _interpolate_tree(doc, Path(path).resolve().parent, os.environ if env is None else env)
    return doc


def _read_text(path: Path, limit: int, what: str, doc: Document) -> str | None:
    """The UTF-8 text of `path`, or None after recording why it cannot be used."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as exc:
        doc.problems.append(ConfigProblem(doc.file, 1, "(file)", f"cannot read: {_why(exc)}"))
        return None
    if len(data) > limit:
        doc.problems.append(
            ConfigProblem(
                doc.file,
                1,
                "(file)",
                f"{what} is larger than {_size(limit)}; is it a dataflow file?",
            )
        )
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        doc.problems.append(
            ConfigProblem(
                doc.file,
                line,
                "(file)",
                f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                "is it a dataflow file?",
            )
        )
        return None


def _size(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit < 1 << 20 else f"{limit >> 20} MiB"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """(line, message) of a YAML error, in words a config author can act on."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return line, f"character #x{exc.character:04x} is not allowed in YAML (on line {line})"
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    if "'\\t'" in problem:
        return line, "a tab cannot indent YAML (or start a value); use spaces"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line + 1 != line:
        problem += f" ({context} that starts on line {context_mark.line + 1})"
    return line, problem


MAX_FILE_BYTES = 1 << 20  # a dataflow file is a few KiB; a private key a few KiB more
MAX_DEPTH = 64  # nesting of mappings and lists, aliases included
MAX_ALIAS_NODES = 10_000  # nodes an alias may stand for, summed over the file


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses deep nesting and aliases that expand too much.

    PyYAML composes recursively (deep brackets end in RecursionError) and expands an alias
    each time it is used (a "billion laughs" file grows without end). Every node's expanded
    size and height are recorded as it is composed, so an alias costs its expansion at once,
    and an alias inside its own anchor (a cycle) is found before anything walks it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            return self._alias(event, parent, index)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = _measure(node, self._sizes)
        return node

    def _alias(self, event: Any, parent: Any, index: Any) -> Any:
        node = super().compose_node(parent, index)
        size = self._sizes.get(id(node))
        if size is None:
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is used inside its own anchor", event.start_mark
            )
        nodes, height = size
        self._expanded += nodes
        if self._expanded > MAX_ALIAS_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases expand to more than {MAX_ALIAS_NODES} values (at *{event.anchor}); "
                "write the values out or use fewer aliases",
                event.start_mark,
            )
        if self._depth + height > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels (through alias *{event.anchor})",
                event.start_mark,
            )
        return node


def _measure(node: Any, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(nodes, height) of `node` expanded, from its children's (composed before it)."""
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        return 1, 1
    measured = [sizes.get(id(child), (1, 1)) for child in children]
    return 1 + sum(n for n, _ in measured), 1 + max((h for _, h in measured), default=0)


_PLAIN_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _construct(node: yaml.Node, path: YamlPath, doc: Document, constructor: yaml.SafeLoader) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if node.tag not in _PLAIN_COLLECTIONS:  # a scalar, or a tagged collection (!!set, !foo)
        return _scalar(node, path, doc, constructor)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, (*path, "(key)"), doc, constructor)
            if not isinstance(key, (str, int)):
                key = str(key)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in out:
                doc.problems.append(
                    ConfigProblem(
                        doc.file,
                        line,
                        format_path(child),
                        f"duplicate key: already set on line {first[key]}",
                    )
                )
                continue
            first[key] = line
            doc.lines[child] = line
            out[key] = _construct(value_node, child, doc, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), doc, constructor) for i, item in enumerate(node.value)]
    return _scalar(node, path, doc, constructor)


def _scalar(node: yaml.Node, path: YamlPath, doc: Document, constructor: yaml.SafeLoader) -> Any:
    """A node's Python value; an unknown tag or impossible value (2026-02-30) is a problem."""
    try:
        return constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        reason = getattr(exc, "problem", None) or str(exc)
        doc.problems.append(
            ConfigProblem(
                doc.file, node.start_mark.line + 1, format_path(path), f"invalid value: {reason}"
            )
        )
        doc.failed.add(path)
        return None


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
        if ref is None:
            return _fail(doc, path, "'${' is not closed by '}'; write $${ for a literal ${")
        if ref.startswith("file:"):
            return _read_ref(ref[5:].strip(), path, doc, base)
        name, sep, default = ref.partition(":-")
        if not _NAME.fullmatch(name):
            return _fail(
                doc,
                path,
                f"'${{{ref}}}' is not a valid reference; use ${{NAME}}, "
                "${NAME:-default} or ${file:PATH}",
            )
        value = env.get(name)
        if sep and not value:
            return default
        if value is None:
            return _fail(doc, path, f"environment variable {name} is not set")
        return value

    return _REF.sub(replace, text)


def _fail(doc: Document, path: YamlPath, message: str) -> str:
    doc.problem(path, message)
    doc.failed.add(path)
    return ""


def _read_ref(name: str, path: YamlPath, doc: Document, base: Path) -> str:
    """The content of ``${file:NAME}``, registered as a secret before anything can print it."""
    target = (base / name).resolve()
    where = f"${{file:{name}}}: cannot read {target}"
    try:
        if not target.is_file():
            reason = "not a regular file" if target.exists() else "No such file or directory"
            return _fail(doc, path, f"{where}: {reason}")
        with target.open("rb") as stream:
            data = stream.read(MAX_REF_BYTES + 1)
    except OSError as exc:
        return _fail(doc, path, f"{where}: {_why(exc)}")
    if len(data) > MAX_REF_BYTES:
        return _fail(
            doc, path, f"{where}: larger than {_size(MAX_REF_BYTES)}; is it the right file?"
        )
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        return _fail(doc, path, f"{where}: not UTF-8 text")
    value = value.removesuffix("\n").removesuffix("\r")
    redact.register(value)  # what a file holds is a secret wherever it lands
    return value


MAX_REF_BYTES = 1 << 20  # a key or a password; not a data file
