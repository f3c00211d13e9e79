"""The JSON Schema of a dataflow file, and the block reference (docs/blocks.md), both built
from the block config models: the one declaration of every key.

A key's description is its model field's ``description`` or, failing that, the comment beside
it in the block's docstring example (``batch_size: 100   # records per request``), so the
example, the schema and the docs cannot drift apart. Plugins are included: every block type
the registry can load is in both.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import textwrap
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dataflow.block import Block
from dataflow.registry import BUILTINS, block_types

PIPE = "\\|"  # a literal | inside a Markdown table cell
SCHEMA_ID = "https://dataflow.invalid/schema/dataflow.json"
_KEY_COMMENT = re.compile(
    r"^(?P<indent>\s*)(?:- )?(?P<key>[A-Za-z_][A-Za-z0-9_]*):[^#]*#\s?(?P<c>.*)$"
)
_COMMENT_ONLY = re.compile(r"^\s*#\s?(?P<c>.*)$")


def example_text(cls: type[Block]) -> str:
    """The YAML example of a block's module docstring (dedented), or ''."""
    doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    if "Example::" not in doc:
        return ""
    lines: list[str] = []
    for line in doc.split("Example::", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith(" "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip("\n")


def example_comments(cls: type[Block]) -> dict[str, str]:
    """Top-level key -> the comment beside it (and comment lines right under it)."""
    comments: dict[str, str] = {}
    key_indent: int | None = None
    last: str | None = None
    for line in example_text(cls).splitlines():
        match = _KEY_COMMENT.match(line)
        plain = re.match(r"^(\s*)(?:- )?([A-Za-z_][A-Za-z0-9_]*):", line)
        if plain is not None:
            indent = len(plain.group(1)) + (2 if line.lstrip().startswith("- ") else 0)
            key_indent = indent if key_indent is None else key_indent
            last = plain.group(2) if indent == key_indent else None
            if match is not None and last is not None:
                comments[last] = match.group("c").strip()
            continue
        only = _COMMENT_ONLY.match(line)
        if only is not None and last is not None and last in comments:
            comments[last] += " " + only.group("c").strip()
    return comments


def _describe(schema: dict[str, Any], comments: dict[str, str]) -> None:
    for key, prop in schema.get("properties", {}).items():
        if "description" not in prop and key in comments:
            prop["description"] = comments[key]


def dataflow_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a dataflow file, every loadable block type included."""
    from dataflow.config import DataflowModel
    from dataflow.templates import TEMPLATES

    types = block_types()
    models: list[type[BaseModel]] = [DataflowModel, *(cls.Config for cls in types.values())]
    refs, schema = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/$defs/{model}"
    )
    defs: dict[str, Any] = schema["$defs"]
    items = []
    for cls in types.values():
        ref = refs[(cls.Config, "validation")]["$ref"]
        block = defs[ref.rsplit("/", 1)[1]]
        block["description"] = _summary(cls)
        _describe(block, example_comments(cls))
        items.append({"$ref": ref})
    top_ref = refs[(DataflowModel, "validation")]["$ref"].rsplit("/", 1)[1]
    top = defs.pop(top_ref)
    top["properties"]["template"]["enum"] = sorted(TEMPLATES)
    top["properties"]["blocks"] = {
        "type": "array",
        "description": "the blocks, run in order: source, file steps, transform, destination; "
        "at most one trigger",
        "items": {"oneOf": items},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **top,
        "title": "dataflow file",
        "$defs": defs,
    }


def _summary(cls: type[Block]) -> str:
    doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    text = first.split(": ", 1)[1] if ": " in first else first
    return text[:1].upper() + text[1:]


def _type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(defs.get(prop["$ref"].rsplit("/", 1)[1], {}).get("title", "object"))
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return f" {PIPE} ".join(json.dumps(v) for v in prop["enum"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            parts = [_type_text(p, defs) for p in prop[key] if p.get("type") != "null"]
            return f" {PIPE} ".join(dict.fromkeys(parts))
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_text(prop.get('items', {}), defs)}"
    if prop.get("format") == "password":
        return "secret"
    return str(kind)


def blocks_markdown() -> str:
    """docs/blocks.md: one section per block type, generated (tests fail when it is stale)."""
    types = block_types()
    out = [
        "# Blocks",
        "",
        "<!-- Generated by `python -m dataflow.schema --docs > docs/blocks.md` from the block",
        "     config models; tests/test_schema.py fails when it is stale. Do not edit. -->",
        "",
        "A dataflow is one source, any file steps, one transform and one destination, in that",
        "order, and at most one trigger. Each built-in block type is one module in `blocks/`",
        "(imported as `dataflow_blocks`); third-party blocks plug in through the",
        "`dataflow.blocks` entry-point group and appear here when installed. Unknown keys are",
        'rejected, with "did you mean". `dataflow schema` prints the same facts as a JSON',
        "Schema for editors.",
        "",
        "| type | kind | module |",
        "|---|---|---|",
    ]
    for name, cls in types.items():
        origin = "built-in" if name in BUILTINS else "plugin"
        out.append(f"| [`{name}`](#{name}) | {cls.kind} | `{cls.__module__}` ({origin}) |")
    for name, cls in types.items():
        schema = cls.Config.model_json_schema()
        defs = schema.get("$defs", {})
        comments = example_comments(cls)
        required = set(schema.get("required", []))
        out += ["", f"## {name}", "", _summary(cls), "", "```yaml", example_text(cls), "```", ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, prop in schema["properties"].items():
            if key in ("name", "type", "enabled"):
                continue
            default = "required" if key in required else json.dumps(prop.get("default"))
            description = str(prop.get("description") or comments.get(key, ""))
            cells = [f"`{key}`", _type_text(prop, defs), default, description.replace("|", PIPE)]
            out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "Every block also takes `name` (unique in the file), `type` and `enabled` (default true).",
        "",
        GUIDE,
    ]
    return "\n".join(out)


GUIDE = """\
## Third-party blocks

A package registers a block class under the `dataflow.blocks` entry-point group:

```toml
[project.entry-points."dataflow.blocks"]
s3_read = "acme_dataflow.s3:S3Read"
```

The class subclasses `dataflow.block.Source`, `FileStep`, `Transform`, `Sink` or `Trigger` and declares
`Config`, a `dataflow.block.BlockConfig` subclass whose `type` defaults to its name. Built-in
names cannot be shadowed. `dataflow.testing.check_block(MyBlock, tmp_path)` is the conformance
suite every built-in block passes; run it in the plugin's tests. `tests/plugins/dataflow_gunzip`
is a complete example (a file step).

## Outcomes

| what happens | where it goes | run status / exit |
|---|---|---|
| a row breaks a rule or a line is malformed | error file (`error_stage` = `transform`) | partial, 3 |
| the API fails a record, or a batch after retries | error file (`destination`, API code or HTTP status) | partial, 3 |
| blank line | counted in `rows_filtered` | - |
| cannot decrypt / parse / mapped column missing | original to `error_directory`, one-row error file | failure, 1 |
| bad credentials, unknown host key, API down | nothing moves; the file is taken up by the next run | failure, 1 |
| content already completed by this dataflow | original to `processed_directory`, `duplicate` | success, 0 |
"""  # noqa: E501 - Markdown table rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--docs"]:
        sys.stdout.write(blocks_markdown())
    else:
        sys.stdout.write(json.dumps(dataflow_schema(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
