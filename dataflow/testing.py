"""The block conformance suite: what every block type, built-in or plugin, must do.

A plugin's own tests call it the same way ours do::

    from dataflow.testing import check_block
    from my_plugin import MyBlock

    def test_conformance(tmp_path):
        check_block(MyBlock, tmp_path)

`check_block` asserts, for one block class:

1. it is a `Block` of a known kind with a `Config` model (a `BlockConfig`) whose ``type``
   default is its type name, and its module docstring holds an ``Example::`` YAML block;
2. the example validates against the model (each ``${...}`` is replaced by the value given in
   ``values``, else by a distinct placeholder) and round-trips (dump, validate again: equal);
3. the model gives a JSON Schema naming the block's ``type`` and every key;
4. no secret value (a ``SecretStr`` field) appears in the model's ``repr``, ``str`` or JSON;
5. ``close()`` is safe before ``open()`` and twice;
6. ``open()`` against unreachable or placeholder settings either succeeds or raises a
   `dataflow.errors.DataflowError`: a library's exception never escapes the block boundary
   (``unreachable`` overrides settings to make this quick: a closed port, not a DNS lookup).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from dataflow.block import Block, BlockConfig, RunContext, Trigger
from dataflow.errors import DataflowError

KINDS = ("source", "step", "transform", "sink", "trigger")
_REF = re.compile(r"\$\{([^}]*)\}")


def example_of(cls: type[Block], values: dict[str, str] | None = None) -> dict[str, Any]:
    """The block's docstring example, parsed, each ``${...}`` replaced (see `check_block`)."""
    doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    assert "Example::" in doc, f"{cls.__module__}: the module docstring has no 'Example::' block"
    lines: list[str] = []
    for line in doc.split("Example::", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith(" "):
            break
        lines.append(line)
    given = values or {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) in given:
            return json.dumps(given[match.group(1)])  # a JSON string is a YAML string
        name = re.sub(r"[^A-Za-z0-9]+", "-", match.group(1)).strip("-").lower()
        return f"placeholder-{name}-value"  # distinct: a leak can be told from a shown value

    data = yaml.safe_load(_REF.sub(substitute, textwrap.dedent("\n".join(lines))))
    assert isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict), (
        f"{cls.__module__}: the example must be one YAML list item (a block)"
    )
    return data[0]


def check_block(
    cls: type[Block],
    tmp_path: Path,
    *,
    unreachable: dict[str, Any] | None = None,
    values: dict[str, str] | None = None,
) -> None:
    """Assert that `cls` follows the block contract (see the module docstring)."""
    assert isinstance(cls, type) and issubclass(cls, Block), f"{cls!r} is not a Block"
    assert cls.kind in KINDS, f"{cls.__name__}.kind {cls.kind!r} is not one of {KINDS}"
    model = cls.Config
    assert issubclass(model, BlockConfig), f"{cls.__name__}.Config is not a BlockConfig"
    type_name = model.model_fields["type"].default
    assert isinstance(type_name, str) and type_name, f"{cls.__name__}.Config.type has no default"

    example = example_of(cls, values)
    assert example.get("type") == type_name, f"the example's type is not {type_name!r}"
    config = model.model_validate(example)
    again = model.model_validate(_reveal(config))
    assert again == config, f"{type_name}: the config does not round-trip"

    schema = model.model_json_schema()
    assert set(model.model_fields) <= set(schema["properties"]), f"{type_name}: schema keys"

    for secret in _secret_values(config):
        for text in (repr(config), str(config), config.model_dump_json()):
            assert secret not in text, f"{type_name}: a secret value is printed: {text[:200]}"

    if issubclass(cls, Trigger):
        block: Block = cls(config)
    else:
        context = RunContext(
            dataflow="conformance", template=_any_template(), workdir=tmp_path, base_dir=tmp_path
        )
        block = cls(model.model_validate({**example, **(unreachable or {})}), context)
    block.close()
    block.close()
    try:
        block.open()
    except DataflowError:
        pass
    except Exception as exc:  # the contract: library exceptions are translated
        raise AssertionError(
            f"{type_name}: open() let a {type(exc).__module__}.{type(exc).__name__} escape: {exc}"
        ) from exc
    finally:
        block.close()
        block.close()


def _any_template() -> Any:
    from dataflow.templates import TEMPLATES

    return TEMPLATES["earned_badges"]


def _secret_values(value: Any) -> list[str]:
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return [s for name in fields for s in _secret_values(getattr(value, name))]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _secret_values(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _secret_values(item)]
    return []


def _reveal(value: Any) -> Any:
    """The model as plain data with its secrets revealed, so it validates to the same model."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        fields = value.model_fields_set | ({"type"} & set(type(value).model_fields))
        return {name: _reveal(getattr(value, name)) for name in fields}
    if isinstance(value, (list, tuple)):
        return [_reveal(v) for v in value]
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    return value
