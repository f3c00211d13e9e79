"""`dataflow schema` and docs/blocks.md are generated from the block models and stay true."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dataflow.schema import blocks_markdown, dataflow_schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = dataflow_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_docs_blocks_md_is_generated_from_the_models() -> None:
    current = (ROOT / "docs" / "blocks.md").read_text()
    assert current == blocks_markdown(), (
        "docs/blocks.md is stale: run `python -m dataflow.schema --docs > docs/blocks.md`"
    )


def test_every_example_config_matches_the_schema(validator: Any) -> None:
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert paths
    for path in paths:
        doc = yaml.safe_load(path.read_text())
        if "blocks" not in doc:
            continue  # a defaults file
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == [], f"{path}: {errors}"


def test_the_schema_refuses_what_validate_refuses(validator: Any) -> None:
    doc = yaml.safe_load((ROOT / "configs" / "acme" / "earned-badges.yaml").read_text())
    doc["blocks"][0]["source_directroy"] = "/inbox"
    assert not validator.is_valid(doc)
    doc["blocks"][0].pop("source_directroy")
    doc["template"] = "earned_badge"
    assert not validator.is_valid(doc)
    doc["template"] = "earned_badges"
    doc["blocks"][3]["batch_size"] = 5000
    assert not validator.is_valid(doc)


def test_schema_describes_blocks_and_keys() -> None:
    schema = dataflow_schema()
    defs = schema["$defs"]
    for name in ("SftpReadConfig", "HttpWriteConfig", "ScheduleConfig"):
        assert defs[name]["description"], name
    assert defs["SftpReadConfig"]["properties"]["ok_file"]["description"].startswith("true:")
    assert schema["properties"]["template"]["enum"] == [
        "earn_badges_bulk",
        "earned_badges",
        "issue_badges_bulk",
    ]
