"""SFTP faults end to end: the CLI as a subprocess against the real sshd, faults injected by
signals to the sshd processes serving the session, tmpfs mounts and directory modes (root)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pwd
import signal
import subprocess
from pathlib import Path

from dataflow.sandbox import SAMPLE_HEADER, SAMPLE_ROWS, free_port, sample_csv

from .conftest import Bed
from .faultkit import growing, kill_quietly, signal_sessions, tmpfs, wait_for

NAME = "badges_2026-11-16.csv.gpg"
PARAMIKO_WORDS = ("Traceback", "size mismatch", "SSHException", "EOFError", "paramiko")


def assert_plain(stderr: str) -> None:
    for word in PARAMIKO_WORDS:
        assert word not in stderr, stderr


def temp_uploads(bed: Bed, directory: str = "errors") -> list[str]:
    return [n for n in bed.sftp.files(directory) if n.startswith(".dataflow-")]


def uid(bed: Bed) -> int:
    return pwd.getpwnam(bed.sftp.user).pw_uid


def rejected_rows(count: int, pad: int) -> bytes:
    """A file whose every row is rejected (customer id not a number), `pad` bytes a row."""
    rows = [f"BADGE-GOLD,x{i},16/11/2026 09:30,1798761600,{'p' * pad}" for i in range(count)]
    return ("\n".join([SAMPLE_HEADER + ",note", *rows]) + "\n").encode()


def raw_config(bed: Bed, **source: object) -> Path:
    """A dataflow without the decrypt step: big random files reach the transform, which
    rejects them (not UTF-8) once they are downloaded whole."""
    return bed.config(source=source, decrypt={"enabled": False})


def spawn(bed: Bed, config: Path, tmpdir: Path) -> subprocess.Popen[str]:
    tmpdir.mkdir(exist_ok=True)
    return subprocess.Popen(
        [*bed_cmd(), "run", str(config), "--json"],
        env={**os.environ, **bed.env, "TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def bed_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "dataflow"]


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, object], str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, (json.loads(out) if out.strip() else {}), err


def test_full_server_disk_stops_in_plain_words_and_leaves_nothing_half_written(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(rejected_rows(3000, 200)))
    config = bed.config()
    with tmpfs(bed.sftp.root / "errors", "64k", uid(bed)):
        code, report, stderr = bed.run_json(config)
        assert code == 1, stderr
        assert "the server stored only part of it (its disk is probably full" in report["reason"]
        assert report["files"][0]["status"] == "failure"
        assert_plain(stderr + json.dumps(report))
        assert bed.sftp.files("errors") == []  # no temporary upload left behind
        assert bed.sftp.files("inbox") == [NAME] and bed.sftp.files("processed") == []
    # space freed: the next run finishes the file, every row in its error file
    code, report, stderr = bed.run_json(config)
    assert code == 3, stderr
    (error_name,) = bed.sftp.files("errors")
    rows = list(csv.reader(io.StringIO((bed.sftp.root / "errors" / error_name).read_text())))
    assert len(rows) == 3001
    assert bed.sftp.files("processed") == [NAME]


def test_an_unreadable_file_is_skipped_and_the_next_files_go_on(bed: Bed) -> None:
    blocked = bed.sftp.put("inbox/badges_a.csv.gpg", bed.keys.encrypt(sample_csv()), 600)
    os.chown(blocked, 0, 0)
    blocked.chmod(0)
    good = "\n".join([SAMPLE_HEADER, *SAMPLE_ROWS[:3]]) + "\n"
    bed.sftp.put("inbox/badges_b.csv.gpg", bed.keys.encrypt(good.encode()), 300)
    code, report, stderr = bed.run_json(bed.config())
    assert code == 1, stderr  # a file needs attention
    skipped, done = report["files"]
    assert skipped["name"] == "badges_a.csv.gpg" and skipped["status"] == "failure"
    assert skipped["reason"].startswith("skipped: cannot read /inbox/badges_a.csv.gpg")
    assert "permission denied" in skipped["reason"] and skipped["processed_path"] is None
    assert (done["name"], done["status"], done["rows_succeeded"]) == (
        "badges_b.csv.gpg",
        "success",
        3,
    )
    assert "reason" not in report  # the run was not stopped
    assert bed.sftp.files("inbox") == ["badges_a.csv.gpg"]
    assert bed.sftp.files("processed") == ["badges_b.csv.gpg"]
    assert "WARNING" in stderr and "going on with the next file" in stderr
    assert_plain(stderr)


def test_connection_dropped_mid_download_is_retried_on_a_new_one(bed: Bed) -> None:
    data = os.urandom(120 << 20)
    bed.sftp.put("inbox/badges_big.csv", data)
    tmpdir = bed.dir / "tmp"
    proc = spawn(bed, raw_config(bed), tmpdir)
    wait_for(growing("dataflow-*/file-*/download", tmpdir))
    assert signal_sessions(bed.sftp, signal.SIGKILL)
    code, report, stderr = finish(proc)
    assert "the connection to the server was lost; reconnecting (1 of 2)" in stderr
    assert_plain(stderr)
    (f,) = report["files"]
    assert f["processed_path"] == "/errors/badges_big.csv", f  # downloaded whole, then rejected
    history = json.loads(bed.run("runs", "--json").stdout)
    assert history[0]["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert code == 1 and bed.sftp.files("inbox") == []


def test_connection_dropped_mid_upload_is_retried_and_nothing_half_written_stays(
    bed: Bed,
) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(rejected_rows(20000, 1500)))
    errors = bed.sftp.root / "errors"
    proc = spawn(bed, bed.config(), bed.dir / "tmp")
    wait_for(lambda: any(p.stat().st_size for p in errors.glob(".dataflow-[!p]*.tmp")), 120)
    assert signal_sessions(bed.sftp, signal.SIGKILL)
    code, _, stderr = finish(proc)
    assert code == 3, stderr
    assert "reconnecting (1 of 2)" in stderr
    assert_plain(stderr)
    assert temp_uploads(bed) == []
    (error_name,) = bed.sftp.files("errors")
    text = (errors / error_name).read_text()
    assert len(list(csv.reader(io.StringIO(text)))) == 20001
    assert bed.sftp.files("processed") == [NAME] and bed.sftp.files("inbox") == []


def test_a_slow_server_is_given_up_on_and_retried(bed: Bed) -> None:
    bed.sftp.put("inbox/badges_big.csv", os.urandom(60 << 20))
    tmpdir = bed.dir / "tmp"
    proc = spawn(bed, raw_config(bed, timeout_seconds=1), tmpdir)
    stopped: list[int] = []
    try:
        wait_for(growing("dataflow-*/file-*/download", tmpdir))
        stopped = signal_sessions(bed.sftp, signal.SIGSTOP)  # the session hangs
        _, report, stderr = finish(proc)
    finally:
        kill_quietly(stopped)
    assert "the server did not answer within 4s; reconnecting (1 of 2)" in stderr
    assert_plain(stderr)
    # downloaded whole on the new connection, then rejected (random bytes are not UTF-8)
    assert report["files"][0]["processed_path"] == "/errors/badges_big.csv"


def test_server_gone_mid_download_stops_with_a_reason_and_keeps_the_file(bed: Bed) -> None:
    bed.sftp.put("inbox/badges_big.csv", os.urandom(60 << 20))
    tmpdir = bed.dir / "tmp"
    proc = spawn(bed, raw_config(bed, timeout_seconds=1), tmpdir)
    assert bed.sftp.proc is not None
    listener = bed.sftp.proc.pid
    stopped: list[int] = []
    try:
        wait_for(growing("dataflow-*/file-*/download", tmpdir))
        os.kill(listener, signal.SIGSTOP)  # no new session gets past the handshake
        stopped = signal_sessions(bed.sftp, signal.SIGSTOP)
        code, report, stderr = finish(proc)
    finally:
        kill_quietly(stopped)
        os.kill(listener, signal.SIGCONT)
    assert code == 1, stderr
    assert "the server did not answer within 4s, and reconnecting failed" in report["reason"]
    assert "the SSH handshake did not complete within 1s" in report["reason"]
    assert report["files"][0]["reason"].endswith("(the file was left in place for the next run)")
    assert_plain(stderr)
    assert bed.sftp.files("inbox") == ["badges_big.csv"]
    assert list(tmpdir.iterdir()) == []  # the partial download was removed


def test_server_down_at_start_stops_with_a_reason(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    port = free_port()  # nothing listens there
    known = bed.dir / "known_hosts"
    line = bed.sftp.known_hosts.read_text().split(" ", 1)[1]
    known.write_text(f"[127.0.0.1]:{port} {line}")
    code, report, stderr = bed.run_json(
        bed.config(source={"port": port, "known_hosts": str(known)})
    )
    assert code == 1
    assert report["reason"].startswith(f"cannot connect to SFTP server 127.0.0.1:{port}: ")
    assert "check hostname, port and that the server is reachable" in report["reason"]
    assert_plain(stderr)
    assert bed.sftp.files("inbox") == [NAME] and bed.api.requests() == []


def test_a_directory_refusing_writes_stops_the_run_before_anything_is_sent(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    config = bed.config()
    for key, directory in (("processed_directory", "processed"), ("error_directory", "errors")):
        path = bed.sftp.root / directory
        path.chmod(0o555)
        try:
            code, report, stderr = bed.run_json(config)
        finally:
            path.chmod(0o755)
        assert code == 1, stderr
        assert report["reason"].startswith(
            f"the SFTP user {bed.sftp.user} cannot write to {key} /{directory} on "
        )
        assert f"(permission denied): make it writable by {bed.sftp.user}" in report["reason"]
        assert report["files"] == []
        assert bed.api.requests() == []  # found before any row was sent
        assert bed.sftp.files("inbox") == [NAME]
        assert temp_uploads(bed, directory) == []
        assert_plain(stderr)
    assert bed.run_json(config)[0] == 3  # writable again: the file goes through
