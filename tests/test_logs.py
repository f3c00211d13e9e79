"""Log lines of the CLI (JSON and text, with run context) and the progress bar on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

from dataflow.sandbox import sample_csv

from .conftest import Bed

NAME = "badges_2026-11-16.csv.gpg"


def put_sample(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))


def test_json_log_lines_carry_dataflow_run_and_lineage(bed: Bed) -> None:
    put_sample(bed)
    code, report, stderr = bed.run_json(bed.config(), "--log-format", "json")
    assert code == 3, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    summary = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    assert lines and all(
        line.strip().startswith(("acme", NAME, "original", "errors")) for line in summary
    )
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert line["dataflow"] == "acme-earned-badges" and line["run_id"] == report["run_id"]
    (f,) = report["files"]
    of_the_file = [line for line in lines if "lineage_id" in line]
    assert {line["lineage_id"] for line in of_the_file} == {f["lineage_id"]}
    messages = " ".join(line["message"] for line in of_the_file)
    assert "sent 5 rows" in messages and "moved to" in messages
    downloading = next(line for line in lines if "downloading" in line["message"])
    assert downloading["run_id"] == report["run_id"]  # its lineage is known once downloaded
    for secret in bed.secret_values():
        assert secret not in stderr


def test_text_log_lines_show_the_context(bed: Bed) -> None:
    put_sample(bed)
    code, report, stderr = bed.run_json(bed.config())
    assert code == 3, stderr
    (f,) = report["files"]
    tag = f"[acme-earned-badges run={report['run_id'][:8]} file={f['lineage_id'][:8]}]"
    assert any(tag in line and "moved to" in line for line in stderr.splitlines())
    assert not any(line.startswith("{") for line in stderr.splitlines())


def run_on_a_terminal(bed: Bed, *args: str) -> tuple[int, str]:
    """The CLI with stderr on a pseudo-terminal; (exit code, what the terminal showed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "dataflow", *args],
        env={**os.environ, **bed.env, "COLUMNS": "160"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(timeout=30), shown.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_not_elsewhere(bed: Bed) -> None:
    put_sample(bed)
    config = bed.config()
    code, shown = run_on_a_terminal(bed, "run", str(config))
    assert code == 3, shown
    assert "rows: 10 read, 5 of 5 sent answered, 5 rejected" in shown
    assert NAME in shown and "\x1b[" in shown  # drawn with terminal control sequences
    assert "downloading" in shown  # log lines still show, above the bar

    put_sample(bed)  # off a terminal (stderr is a pipe): the same run, no bar
    code, _, stderr = bed.run_json(config)
    assert code == 3, stderr
    assert "downloading" in stderr
    assert " read, " not in stderr and "\x1b[" not in stderr
