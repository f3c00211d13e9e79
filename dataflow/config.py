"""Dataflow files: load, interpolate, validate; every problem at once, with its line.

``load_dataflow(path)`` returns a `Dataflow` or raises `ConfigError` holding every problem as
``file:line: yaml.path: message``. Nothing connects anywhere during validation.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from dataflow import redact, registry
from dataflow.alerts.model import AlertsConfig, DefaultsModel, find_defaults, merge
from dataflow.block import Block, BlockConfig, Trigger
from dataflow.errors import ConfigError
from dataflow.hints import did_you_mean
from dataflow.templates import TEMPLATES, Template
from dataflow.yamlsource import Document, YamlPath, load

ORDER = {"source": 0, "step": 1, "transform": 2, "sink": 3}  # a trigger may stand anywhere


class DataflowModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=100)
    template: str
    enabled: bool = True
    blocks: list[dict[str, Any]] = Field(repr=False)  # raw; validated per block type
    alerts: AlertsConfig | None = None  # merged over a defaults.yaml's (dataflow.alerts.model)


@dataclass(frozen=True)
class BlockSpec:
    cls: type[Block]
    config: BlockConfig


@dataclass(frozen=True)
class Dataflow:
    path: Path
    model: DataflowModel
    template: Template
    blocks: tuple[BlockSpec, ...]  # enabled blocks only, in order

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def trigger(self) -> Trigger | None:
        """The dataflow's trigger block, if it has one (enabled)."""
        for spec in self.blocks:
            if issubclass(spec.cls, Trigger):
                trigger: Trigger = spec.cls(spec.config)
                return trigger
        return None


def load_dataflow(path: str | Path, env: Mapping[str, str] | None = None) -> Dataflow:
    doc = load(path, env)
    if doc.problems and doc.data is None:
        raise ConfigError(doc.problems)
    if not isinstance(doc.data, dict):
        doc.problem((), "a dataflow file must be a mapping of keys (version, name, ...)")
        raise ConfigError(doc.problems)
    if "trigger" in doc.data:  # the earlier form: say what to write instead
        doc.problem(("trigger",), _old_trigger(doc.data["trigger"]))
        del doc.data["trigger"]
    _apply_defaults(doc, Path(path), env)
    model = _validate(doc, DataflowModel, doc.data, ())
    template = None
    name = doc.data.get("template")
    if isinstance(name, str):
        template = TEMPLATES.get(name)
        if template is None:
            doc.problem(("template",), _unknown("template", name, list(TEMPLATES)))
    specs = _validate_blocks(doc, doc.data.get("blocks"), template)
    if doc.problems or model is None or template is None:
        raise ConfigError(sorted(doc.problems, key=lambda p: p.line))
    _register_secrets(model, *(s.config for s in specs))
    enabled = tuple(s for s in specs if s.config.enabled)
    return Dataflow(Path(path), model, template, enabled)


def _apply_defaults(doc: Document, path: Path, env: Mapping[str, str] | None) -> None:
    """Merge the nearest defaults.yaml's ``alerts:`` under the file's own, key by key. The
    defaults file is validated on its own, so its problems carry its own name and lines."""
    found = find_defaults(path)
    if found is None:
        return
    defaults = load(found, env)
    if defaults.data is None:
        doc.problems += defaults.problems
        return
    if not isinstance(defaults.data, dict):
        defaults.problem((), "a defaults file must be a mapping of keys (alerts)")
    elif _validate(defaults, DefaultsModel, defaults.data, ()) is not None:
        merged = merge(defaults.data.get("alerts"), doc.data.get("alerts"))
        if merged is not None:
            doc.data["alerts"] = merged
    doc.problems += defaults.problems


def _old_trigger(value: Any) -> str:
    keys = dict(value) if isinstance(value, dict) else {"cron": "0 6 * * MON"}
    inline = ", ".join(f"{k}: {_flow(v)}" for k, v in keys.items())
    return (
        "a top-level 'trigger' is no longer read; the trigger is a block: add to blocks: "
        f"'- {{name: trigger, type: schedule, {inline}}}'"
    )


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) and (" " in value or ":" in value) else str(value)


def _validate_blocks(doc: Document, raw: Any, template: Template | None) -> list[BlockSpec]:
    if not isinstance(raw, list):
        return []  # the model's validation already reported it
    specs: list[BlockSpec] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        path: YamlPath = ("blocks", i)
        if not isinstance(item, dict):
            doc.problem(path, "a block must be a mapping with at least name and type")
            continue
        type_name = item.get("type")
        if not isinstance(type_name, str):
            doc.problem(path, "required key 'type' is missing")
            continue
        cls = registry.resolve(type_name)
        if cls is None:
            doc.problem((*path, "type"), _unknown("block type", type_name, registry.names()))
            continue
        config = _validate(doc, cls.Config, item, path)
        if config is None:
            continue
        if config.name in names:
            doc.problem(
                (*path, "name"),
                f"block name {config.name!r} is already used by blocks[{names[config.name]}]",
            )
        names[config.name] = i
        if template is not None:
            for sub, message in config.check(template):
                doc.problem((*path, *sub), message)
        specs.append(BlockSpec(cls, config))
    _check_order(doc, specs, raw)
    return specs


def _check_order(doc: Document, specs: list[BlockSpec], raw: list[Any]) -> None:
    if len(specs) != len(raw):
        return  # a block already failed; order problems would only add noise
    kinds: list[str] = [s.cls.kind for s in specs]
    triggers = [i for i, kind in enumerate(kinds) if kind == "trigger"]
    if len(triggers) > 1:
        doc.problem(
            ("blocks", triggers[1]),
            f"a dataflow has at most one trigger; blocks[{triggers[0]}] is one already",
        )
    ordered = [(i, k) for i, k in enumerate(kinds) if k != "trigger"]
    kinds = [k for _, k in ordered]
    for kind, label in (
        ("source", "source (sftp_read)"),
        ("transform", "transform (field_mapping)"),
        ("sink", "destination (http_write)"),
    ):
        count = kinds.count(kind)
        if count != 1:
            doc.problem(("blocks",), f"a dataflow needs exactly one {label}; found {count}")
    ranks = [ORDER[k] for k in kinds]
    for i in range(1, len(ranks)):
        if ranks[i] < ranks[i - 1]:
            doc.problem(
                ("blocks", ordered[i][0]),
                "blocks must run source, then steps (pgp_decrypt), then "
                f"transform, then destination; {kinds[i]} comes too late",
            )
            break


def _validate(doc: Document, model: type[Any], data: Any, prefix: YamlPath) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = _data_loc(data, err["loc"])
            path = (*prefix, *loc)
            if any(path[: len(p)] == p for p in doc.failed):
                continue  # its ${...} already failed: one problem is enough
            if err["type"] == "missing":
                doc.problem(path[:-1], f"required key '{loc[-1]}' is missing")
            else:
                doc.problem(path, _message(err, model, loc))
        return None


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The error's location as a YAML path: union tags and model names removed."""
    out: list[Any] = []
    current = data
    for i, part in enumerate(loc):
        if (isinstance(current, dict) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        ):
            current = current[part]
            out.append(part)
        elif i == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _message(err: Any, model: type[Any], loc: tuple[Any, ...]) -> str:
    if err["type"] == "extra_forbidden":
        return _unknown("key", str(loc[-1]), _fields_at(model, loc[:-1]))
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _unknown(what: str, value: str, known: list[str]) -> str:
    return f"unknown {what} '{value}'{did_you_mean(value, known)}"


def _fields_at(model: type[Any], loc: tuple[Any, ...]) -> list[str]:
    """Every key the model(s) at `loc` accept (all members of a union), for 'did you mean'."""
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        following: list[type[BaseModel]] = []
        for owner in current:
            info = owner.model_fields.get(str(part))
            if info is not None:
                following += _models_in(info.annotation)
        current = following
    names: list[str] = []
    for owner in current:
        names += [n for n in owner.model_fields if n not in names]
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _register_secrets(*models: BaseModel) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            redact.register(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for model in models:
        walk(model)
