"""Hostile dataflow files, through the CLI: a config error (exit 2) with its line, fast.

Each file is validated by ``dataflow validate`` as a subprocess under a wall-clock timeout and
an address-space limit, so a hang, a runaway allocation or a RecursionError traceback fails
the test instead of the machine.
"""

from __future__ import annotations

import json
import re
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Bed
from .test_config import GOOD

MEMORY_LIMIT = 1 << 30  # address space of the CLI process; a bomb needs far more
ANSWER_WITHIN = 5.0  # seconds, start-up included (about 0.5 s of it on this machine)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def validate(path: Path) -> tuple[int, list[str], str, float]:
    """(exit code, problem lines with the folder removed, stderr, seconds)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dataflow", "validate", str(path)],
        env={"T_PASSWORD": "pw-value", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=_limit_memory,
    )
    elapsed = time.monotonic() - started
    lines = [ln.replace(str(path.parent) + "/", "") for ln in result.stdout.splitlines()]
    return result.returncode, lines, result.stderr, elapsed


def assert_config_error(path: Path, *expected: str) -> list[str]:
    """Exit 2, every `expected` line printed, no traceback, within the time bound."""
    code, lines, stderr, elapsed = validate(path)
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, lines, stderr[-2000:])
    assert elapsed < ANSWER_WITHIN, f"took {elapsed:.1f} s"
    for line in expected:
        assert line in lines, lines
    for line in lines:
        assert re.fullmatch(r"[^:]+:\d+: \S+: .+", line), line
    return lines


def test_the_good_file_fits_in_the_limits(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD)
    code, lines, stderr, _ = validate(path)
    assert code == 0, (lines, stderr)


def billion_laughs(levels: int = 9) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return "version: 1\n" + text


def test_alias_bomb_is_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(billion_laughs())
    # *a0 stands for 10 values, *a1 for 91, *a2 for 820, *a3 for 7381: the sum passes 10000
    # at the first *a3, on line 6
    assert_config_error(
        path,
        "flow.yaml:6: (yaml): invalid YAML: aliases expand to more than 10000 values (at *a3); "
        "write the values out or use fewer aliases",
    )


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = GOOD.replace("    username: acme\n", "    username: &user acme\n").replace(
        "username: u,", "username: *user,"
    )
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    code, lines, stderr, _ = validate(path)
    assert code == 0, (lines, stderr)


def test_alias_inside_its_own_anchor(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text("version: 1\nname: x\nloop: &a [1, [2, *a]]\n")
    assert_config_error(
        path, "flow.yaml:3: (yaml): invalid YAML: alias *a is used inside its own anchor"
    )


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused_at_its_line(tmp_path: Path, style: str) -> None:
    path = tmp_path / "flow.yaml"
    if style == "flow":
        path.write_text("version: 1\nname: " + "[" * 50_000 + "]" * 50_000 + "\n")
        line = 2
    else:
        path.write_text("version: 1\n" + "".join(" " * i + f"k{i}:\n" for i in range(1000)))
        line = 65  # the mapping on line 65 is the 64th level: its keys would be the 65th
    assert_config_error(
        path, f"flow.yaml:{line}: (yaml): invalid YAML: nested deeper than 64 levels"
    )


def test_nesting_through_an_alias_is_bounded_too(tmp_path: Path) -> None:
    deep = "[" * 40 + "1" + "]" * 40
    path = tmp_path / "flow.yaml"
    path.write_text(
        f"version: 1\na: &a {deep}\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
    )
    assert_config_error(
        path, "flow.yaml:3: (yaml): invalid YAML: nested deeper than 64 levels (through alias *a)"
    )


def test_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD + "# " + "x" * (2 << 20) + "\n")
    assert_config_error(
        path, "flow.yaml:1: (file): the file is larger than 1 MiB; is it a dataflow file?"
    )


def test_binary_file_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_bytes(b"version: 1\nname: a\n\x89PNG\r\n\x1a\n\x00\x00")
    assert_config_error(
        path, "flow.yaml:3: (file): not UTF-8 text (byte 0x89 on line 3); is it a dataflow file?"
    )


def test_control_character(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_bytes(b"version: 1\nname: a\ntemplate: \x00\n")
    assert_config_error(
        path,
        "flow.yaml:3: (yaml): invalid YAML: character #x0000 is not allowed in YAML (on line 3)",
    )


def test_tab_indentation(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD.replace("    type: field_mapping\n", "\ttype: field_mapping\n"))
    assert_config_error(
        path,
        "flow.yaml:18: (yaml): invalid YAML: a tab cannot indent YAML (or start a value); "
        "use spaces",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "flow.yaml:1: (top): the file is empty"),
        ("# only a comment\n", "flow.yaml:1: (top): the file is empty"),
        (
            "- version: 1\n- name: x\n",
            "flow.yaml:1: (top): a dataflow file must be a mapping of keys (version, name, ...)",
        ),
        (
            "just a sentence\n",
            "flow.yaml:1: (top): a dataflow file must be a mapping of keys (version, name, ...)",
        ),
        (
            "version: 1\n---\nversion: 1\n",
            "flow.yaml:2: (yaml): invalid YAML: but found another document "
            "(expected a single document in the stream that starts on line 1)",
        ),
    ],
)
def test_not_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    assert_config_error(path, expected)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD.replace("    username: acme\n", "    username: acme\n    username: b\n"))
    assert_config_error(
        path, "flow.yaml:12: blocks[0].username: duplicate key: already set on line 11"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-02-30", "invalid value: day is out of range for month"),
        ("!!int twelve", "invalid value: invalid literal for int() with base 10: 'twelve'"),
        (
            "!!python/object/apply:os.system [echo hi]",
            "invalid value: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
    ],
)
def test_impossible_value_or_unknown_tag(tmp_path: Path, value: str, expected: str) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD.replace("    username: acme\n", f"    username: {value}\n"))
    assert_config_error(path, f"flow.yaml:11: blocks[0].username: {expected}")


def test_unclosed_reference(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD.replace("password: ${T_PASSWORD}\n", "password: ${T_PASSWORD\n"))
    assert_config_error(
        path,
        "flow.yaml:12: blocks[0].password: '${' is not closed by '}'; write $${ for a literal ${",
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("nope.txt", "No such file or directory"),
        ("secrets", "not a regular file"),  # a directory
        ("/dev/zero", "not a regular file"),  # endless
        ("big.txt", "larger than 1 MiB; is it the right file?"),
        ("binary.bin", "not UTF-8 text"),
    ],
)
def test_file_reference_problems(tmp_path: Path, target: str, reason: str) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "big.txt").write_text("x" * ((1 << 20) + 1))
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00")
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD.replace("password: ${T_PASSWORD}\n", f"password: ${{file:{target}}}\n"))
    shown = target if target.startswith("/") else str(tmp_path / target)
    shown = shown.replace(str(tmp_path) + "/", "")
    assert_config_error(
        path, f"flow.yaml:12: blocks[0].password: ${{file:{target}}}: cannot read {shown}: {reason}"
    )


def test_file_reference_is_relative_to_the_dataflow_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pw.txt").write_text("from-a-file\n")
    path = tmp_path / "conf" / "flow.yaml"
    path.write_text(GOOD.replace("password: ${T_PASSWORD}\n", "password: ${file:pw.txt}\n"))
    code, lines, stderr, _ = validate(path)  # run from another working directory
    assert code == 0, (lines, stderr)


# -- a value read from a file is a secret wherever it lands ---------------------------------


@pytest.mark.parametrize("case", ["unknown_host_key", "unreachable"])
def test_file_value_in_a_plain_field_is_never_shown(bed: Bed, case: str) -> None:
    host = f"sftp-{secrets.token_hex(6)}.invalid"
    (bed.dir / "host.txt").write_text(host + "\n")
    known_hosts = bed.dir / "known_hosts"
    text = bed.sftp.known_hosts.read_text()
    if case == "unreachable":  # its key is known, so the run tries to connect
        text += text.replace("[127.0.0.1]", f"[{host}]")
    known_hosts.write_text(text)
    config = bed.config(source={"hostname": "${file:host.txt}", "known_hosts": str(known_hosts)})

    validated = bed.run("validate", str(config))
    code, report, stderr = bed.run_json(config)
    history = bed.run("runs")
    history_json = bed.run("runs", "--json")

    assert validated.returncode == 0, validated.stdout
    assert code == 1, stderr
    expected = "host key of" if case == "unknown_host_key" else "cannot connect to SFTP server"
    assert expected in report["reason"]
    assert "***" in report["reason"]
    assert json.loads(history_json.stdout)[0]["reason"] == report["reason"]
    everything = [validated.stdout, validated.stderr, json.dumps(report), stderr]
    everything += [history.stdout, history.stderr, history_json.stdout]
    for text in everything:
        assert host not in text
        assert host.split(".")[0] not in text
