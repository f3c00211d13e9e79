"""The command line in-process, with click's CliRunner (end-to-end runs of it as a subprocess
are in test_e2e.py and the others)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dataflow import __version__
from dataflow.cli import cli, main

from .test_config import GOOD

COMMANDS = [
    "validate", "run", "retry", "schedule", "worker", "runs", "ui", "check", "schema", "db"
]  # fmt: skip


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DATAFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("T_PASSWORD", "s3cret-value")
    return CliRunner()


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD)
    return path


def test_every_command_is_there() -> None:
    assert sorted(cli.commands) == sorted(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_help_shows_an_example(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    example = result.output.split("Example:\n", 1)[1]
    assert example.strip().startswith("dataflow ")


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert (result.exit_code, result.output) == (0, f"dataflow {__version__}\n")


def test_validate_exit_codes(runner: CliRunner, flow: Path, tmp_path: Path) -> None:
    ok = runner.invoke(cli, ["validate", str(flow)])
    assert ok.exit_code == 0, ok.output
    assert f"{flow}: ok (acme-earned-badges, template earned_badges, 4 blocks)" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("template: earned_badges", "template: nope"))
    result = runner.invoke(cli, ["validate", str(flow), str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:3: template:" in result.output


def test_usage_errors_exit_2_with_clicks_message(runner: CliRunner, flow: Path) -> None:
    for args, message in [
        (["validate"], "Missing argument 'FILES...'"),
        (["run", str(flow), "--bogus"], "No such option '--bogus'"),
        (["ui", "--http", "nowhere"], "is not HOST:PORT"),
        (["runs", "--until", "tomorrow"], "is not an ISO date"),
        (["runs", "--log-format", "xml"], "'xml' is not one of 'text', 'json'"),
        (["nosuch"], "No such command 'nosuch'"),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Usage: dataflow " in result.output


def test_runs_json_on_an_empty_state(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["runs", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_log_format_and_verbose_before_or_after_the_command(runner: CliRunner) -> None:
    for args in (
        ["--log-format", "json", "-v", "runs", "--json"],
        ["runs", "--json", "--log-format", "json", "-v"],
        ["--log-format", "text", "runs", "--log-format", "json", "--json"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
        assert json.loads(result.stdout) == []


def test_schema_output_parses(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert {"sftp_read", "http_write", "field_mapping"} <= set(json.dumps(schema).split('"'))


def test_retry_of_an_unknown_lineage_is_refused(runner: CliRunner, flow: Path) -> None:
    result = runner.invoke(cli, ["retry", str(flow), "no-such-lineage"])
    assert result.exit_code == 2
    assert "dataflow retry: no file with lineage no-such-lineage" in result.stderr


def test_main_returns_the_exit_code(flow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_PASSWORD", "s3cret-value")
    assert main(["validate", str(flow)]) == 0
    assert main(["validate", str(flow.with_name("missing.yaml"))]) == 2
    assert main(["run"]) == 2  # usage error
    assert main(["--help"]) == 0
