"""PGP faults over a whole run (CLI subprocess, sshd, real gpg, the emulator).

A problem of ours (the passphrase, a full local disk) stops the run and leaves every file in
the inbox; a problem of the file (signed but not encrypted) rejects that file only.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow.sandbox import SAMPLE_HEADER, _gpg, _gpg_home, sample_csv

from .conftest import Bed

GOOD = ["badges_2026-11-16.csv.gpg", "badges_2026-11-23.csv.gpg"]


def run_json(
    bed: Bed, config: Path, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    result = bed.run("run", str(config), "--json", env=env)
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


def put_good_files(bed: Bed) -> None:
    for i, name in enumerate(GOOD):
        bed.sftp.put(f"inbox/{name}", bed.keys.encrypt(sample_csv() + b"\n" * i))


def test_wrong_passphrase_stops_the_run_and_keeps_every_file(bed: Bed) -> None:
    put_good_files(bed)
    config = bed.config()
    code, report, stderr = run_json(bed, config, env={"T_PGP_PASSPHRASE": "not-the-passphrase"})

    assert code == 1, stderr
    assert "the passphrase does not unlock the private key; fix passphrase" in report["reason"]
    assert "the passphrase does not unlock the private key" in stderr
    assert bed.sftp.files("inbox") == GOOD  # both kept, for the next run
    assert bed.sftp.files("errors") == []  # no error file, no original moved there
    assert bed.sftp.files("processed") == []
    assert bed.api.received() == []
    assert "not-the-passphrase" not in stderr

    # fixed passphrase: both files go through on the next run
    code, report, stderr = run_json(bed, config)
    assert code == 3, stderr  # the sample has bad rows: partial
    assert [f["name"] for f in report["files"]] == GOOD
    assert bed.sftp.files("inbox") == []


@pytest.fixture
def small_tmp() -> Iterator[Path]:
    """A 2 MiB tmpfs, to serve as the run's temp directory (needs root)."""
    mount = Path(tempfile.mkdtemp(prefix="df-small-tmp-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=1777", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def test_full_disk_while_decrypting_keeps_the_file(bed: Bed, small_tmp: Path) -> None:
    # ~4 MB of rows compress to a few KiB: the download fits, the plaintext does not
    rows = b"".join(
        b"BADGE-GOLD,%d,16/11/2026 09:30,1798761600\n" % (1000 + i % 7) for i in range(90_000)
    )
    data = SAMPLE_HEADER.encode() + b"\n" + rows
    encrypted = bed.keys.encrypt(data)
    assert len(encrypted) < 200_000 and len(data) > 3 * 2**20
    name = "badges_big.csv.gpg"
    bed.sftp.put(f"inbox/{name}", encrypted)
    config = bed.config()

    code, report, stderr = run_json(bed, config, env={"TMPDIR": str(small_tmp)})

    assert code == 1, stderr
    (f,) = report["files"]
    assert f["status"] == "failure"
    assert "No space left on device" in report["reason"]
    assert "free space or fix the permissions of the temp directory" in report["reason"]
    assert "the file was left in place for the next run" in f["reason"]
    assert bed.sftp.files("inbox") == [name]
    assert bed.sftp.files("errors") == []
    assert bed.api.received() == []
    assert list(small_tmp.iterdir()) == []  # the run's temp dir was removed


def test_signed_but_not_encrypted_file_is_rejected_with_a_plain_reason(bed: Bed) -> None:
    with _gpg_home() as home:
        _gpg(home, "--passphrase", bed.keys.passphrase, "--import", str(bed.keys.private_key))
        signed = _gpg(home, "--passphrase", bed.keys.passphrase, "--sign", input=sample_csv())
    name = "badges_signed.csv.gpg"
    bed.sftp.put(f"inbox/{name}", signed)
    put_good_files(bed)  # behind it: still processed
    code, report, stderr = run_json(bed, bed.config())

    assert code == 1, stderr
    by_name = {f["name"]: f for f in report["files"]}
    assert by_name[name]["status"] == "failure"
    assert by_name[name]["reason"].startswith(
        "the file is signed but not encrypted, so nothing was decrypted"
    )
    assert [by_name[n]["status"] for n in GOOD] == ["partial", "partial"]
    assert name in bed.sftp.files("errors")
    assert bed.sftp.files("inbox") == []
