"""Config errors, asserted verbatim: ``file:line: yaml.path: message``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow.config import load_dataflow
from dataflow.errors import ConfigError
from dataflow.sandbox import PgpKeys

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
version: 1
name: acme-earned-badges
template: earned_badges
# The acme brand's weekly earned-badges file:
# Mondays at 06:00 India time (the trigger is
# the last block).
blocks:
  - name: src
    type: sftp_read
    hostname: 127.0.0.1
    username: acme
    password: ${T_PASSWORD}
    source_directory: /inbox
    filename_pattern: 'badges_.*\\.csv'
    processed_directory: /processed
    error_directory: /errors
  - name: transform
    type: field_mapping
    mapping:
      badgeMetaId: badge_id
      customerId: customer_id
      earnEventDate: {column: event_date, date_format: "%d/%m/%Y"}
      earnExpiresOn: {column: expires_at, date_format: epoch}
  - name: dest
    type: http_write
    base_url: https://eu.api.capillarytech.com
    auth: {type: basic, username: u, password: "${T_PASSWORD}"}
  - name: trigger
    type: schedule
    cron: "0 6 * * MON"
    timezone: Asia/Kolkata
"""


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    try:
        load_dataflow(path, env={"T_PASSWORD": "s3cret-value"} if env is None else env)
    except ConfigError as exc:
        return [str(p).replace(str(tmp_path) + "/", "") for p in exc.problems]
    return []


def test_good_file_loads(tmp_path: Path) -> None:
    assert problems(tmp_path, GOOD) == []
    flow = load_dataflow(tmp_path / "flow.yaml", env={"T_PASSWORD": "x" * 8})
    assert [s.config.name for s in flow.blocks] == ["src", "transform", "dest", "trigger"]
    assert flow.blocks[0].config.port == 22  # type: ignore[attr-defined]


def test_misspelt_key_says_did_you_mean(tmp_path: Path) -> None:
    text = GOOD.replace("    source_directory:", "    source_directroy:")
    assert problems(tmp_path, text) == [
        "flow.yaml:8: blocks[0]: required key 'source_directory' is missing",
        "flow.yaml:13: blocks[0].source_directroy: unknown key 'source_directroy'; "
        "did you mean 'source_directory'?",
    ]


def test_misspelt_block_type(tmp_path: Path) -> None:
    text = GOOD.replace("type: sftp_read", "type: sftp_reed")
    assert problems(tmp_path, text) == [
        "flow.yaml:9: blocks[0].type: unknown block type 'sftp_reed'; did you mean 'sftp_read'?",
    ]


def test_nested_key_and_value_problems_are_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace("timezone: Asia/Kolkata", "timezone: Asia/Kolkatta").replace(
        "auth: {type: basic, username: u,", "auth: {type: basic, usernme: u,"
    )
    text = text.replace("    username: acme\n", "    username: acme\n    port: 70000\n")
    assert problems(tmp_path, text) == [
        "flow.yaml:12: blocks[0].port: Input should be less than or equal to 65535",
        "flow.yaml:28: blocks[2].auth: required key 'username' is missing",
        "flow.yaml:28: blocks[2].auth.usernme: unknown key 'usernme'; did you mean 'username'?",
        "flow.yaml:32: blocks[3].timezone: unknown IANA timezone 'Asia/Kolkatta' (e.g. "
        "Asia/Kolkata, UTC)",
    ]


def test_missing_environment_variable_and_file(tmp_path: Path) -> None:
    text = GOOD.replace("password: ${T_PASSWORD}", "password: ${NOT_SET_ANYWHERE}")
    text = text.replace(
        "    type: field_mapping\n", "    type: field_mapping\n    headers: ${file:nope.txt}\n"
    )
    assert problems(tmp_path, text) == [
        "flow.yaml:12: blocks[0].password: environment variable NOT_SET_ANYWHERE is not set",
        "flow.yaml:19: blocks[1].headers: ${file:nope.txt}: cannot read nope.txt: No such file "
        "or directory",
    ]


def test_default_value_in_reference(tmp_path: Path) -> None:
    text = GOOD.replace("hostname: 127.0.0.1", "hostname: ${SFTP_HOST:-sftp.example}")
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    flow = load_dataflow(path, env={"T_PASSWORD": "pw-value"})
    assert flow.blocks[0].config.hostname == "sftp.example"  # type: ignore[attr-defined]


def test_mandatory_field_not_mapped_and_unknown_field(tmp_path: Path) -> None:
    text = GOOD.replace("      customerId: customer_id\n", "      customerid: customer_id\n")
    assert problems(tmp_path, text) == [
        "flow.yaml:19: blocks[1].mapping: mandatory field 'customerId' of template "
        "earned_badges is not mapped",
        "flow.yaml:21: blocks[1].mapping.customerid: 'customerid' is not a field of template "
        "earned_badges; did you mean 'customerId'?",
    ]


def test_bad_cron_unknown_template_and_order(tmp_path: Path) -> None:
    text = GOOD.replace('"0 6 * * MON"', '"0 6 * MON"').replace(
        "template: earned_badges", "template: earned_badge"
    )
    assert problems(tmp_path, text) == [
        "flow.yaml:3: template: unknown template 'earned_badge'; did you mean 'earned_badges'?",
        "flow.yaml:30: blocks[3].cron: '0 6 * MON' is not a 5-field crontab (minute hour day "
        "month day-of-week)",
    ]


def test_block_order_and_duplicate_names(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: dest", "  - name: src")
    lines = text.splitlines(keepends=True)
    assert problems(tmp_path, "".join(lines)) == [
        "flow.yaml:24: blocks[2].name: block name 'src' is already used by blocks[0]",
    ]


def test_invalid_regex_and_date_format(tmp_path: Path) -> None:
    text = GOOD.replace("'badges_.*\\.csv'", "'badges_(.csv'").replace(
        'date_format: "%d/%m/%Y"', "date_format: dd/mm/yyyy"
    )
    assert problems(tmp_path, text) == [
        "flow.yaml:14: blocks[0].filename_pattern: not a valid regular expression: missing ), "
        "unterminated subpattern at position 7",
        "flow.yaml:22: blocks[1].mapping.earnEventDate.date_format: date_format 'dd/mm/yyyy' is "
        "neither a strftime pattern (like '%d/%m/%Y') nor one of epoch, epoch_ms, iso8601",
    ]


def test_yaml_syntax_error_and_duplicate_key(tmp_path: Path) -> None:
    assert problems(tmp_path, "version: 1\nname: [x\n") == [
        "flow.yaml:3: (yaml): invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence that starts on line 2)",
    ]
    assert problems(tmp_path, GOOD.replace("version: 1\n", "version: 1\nversion: 1\n"))[0] == (
        "flow.yaml:2: version: duplicate key: already set on line 1"
    )


def test_secret_values_never_printed(tmp_path: Path) -> None:
    text = GOOD.replace("auth: {type: basic, username: u,", "auth: {type: basic, user: u,")
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "dataflow", "validate", str(path)],
        env={"T_PASSWORD": "s3cret-value", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown key 'user'; did you mean 'username'?" in result.stdout
    assert "s3cret-value" not in result.stdout + result.stderr


def test_secret_repr_is_masked(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD)
    flow = load_dataflow(path, env={"T_PASSWORD": "s3cret-value"})
    assert "s3cret-value" not in repr(flow) + str(flow)


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("version: 1", "version: 2"))
    run = lambda *files: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "dataflow", "validate", *map(str, files)],
        env={"T_PASSWORD": "pw-value", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    ok = run(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok (acme-earned-badges, template earned_badges, 4 blocks)" in ok.stdout
    both = run(good, bad)
    assert both.returncode == 2
    assert f"{bad}:1: version: Input should be 1" in both.stdout


@pytest.fixture
def configs_copy(tmp_path: Path) -> Path:
    target = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", target)
    keys = PgpKeys(tmp_path, "pw").generate()
    shutil.copy(keys.private_key, target / "acme" / "secrets" / "acme-private.asc")
    (target / "globex" / "secrets").mkdir(exist_ok=True)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            str(target / "globex" / "secrets" / "globex-sftp-key"),
        ],
        check=True,
    )
    return target


def test_every_example_config_validates(configs_copy: Path) -> None:
    files = sorted(configs_copy.rglob("*.yaml"))
    assert len(files) >= 4
    env = {
        "ACME_SFTP_PASSWORD": "x",
        "ACME_PGP_PASSPHRASE": "x",
        "ACME_CLIENT_KEY": "x",
        "ACME_CLIENT_SECRET": "x",
        "GLOBEX_API_PASSWORD": "x",
    }
    for path in files:
        load_dataflow(path, env=env)  # raises ConfigError with every problem
