"""Archives on sftp_read (`unzip_files`): gzip beside zip, zips of several files
(`zip_member`), zip-slip paths and decompression bombs.

End to end through the CLI (real sshd, gpg, emulator), plus the block's `prepare` on real
archive files for the edge cases."""

from __future__ import annotations

import gzip
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dataflow.block import RunContext
from dataflow.errorfile import error_file_name
from dataflow.errors import FileRejected
from dataflow.sandbox import SAMPLE_HEADER, SAMPLE_ROWS, sample_csv
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.sftp_read import SftpRead, SftpReadConfig

from .conftest import Bed, counts

GOOD = ("\n".join([SAMPLE_HEADER, *SAMPLE_ROWS[:3]]) + "\n").encode()
UNPACK = {"filename_pattern": r"badges_.*", "unzip_files": True}


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def run(bed: Bed, name: str, data: bytes, **source: Any) -> dict[str, Any]:
    bed.sftp.put(f"inbox/{name}", bed.keys.encrypt(data))
    _, report, stderr = bed.run_json(bed.config(source={**UNPACK, **source}))
    assert report, stderr
    (f,) = report["files"]
    return dict(f)


def assert_rejected(bed: Bed, f: dict[str, Any], name: str) -> str:
    assert f["status"] == "failure"
    assert f["processed_path"] == f"/errors/{name}"
    assert bed.sftp.files("errors") == sorted([name, f["error_file"].rsplit("/", 1)[1]])
    text = (bed.sftp.root / f["error_file"].lstrip("/")).read_text()
    assert f["reason"] in text and "connect_to_source" in text  # the stage that refused it
    assert bed.api.requests() == []
    return str(f["reason"])


def test_a_gzip_file_is_gunzipped_after_decryption(bed: Bed) -> None:
    name = "badges_2026-11-16.csv.gz.gpg"
    f = run(bed, name, gzip.compress(sample_csv()))
    assert f["status"] == "partial"
    assert counts(f) == (10, 5, 5, 4, 1)  # the same rows as the plain sample
    # the name rule strips .gz as well as .gpg
    assert re.fullmatch(r"/errors/result_\d{14}_badges_2026-11-16\.csv", f["error_file"])
    assert f["processed_path"] == f"/processed/{name}"
    assert sorted(r["customerId"] for r in bed.api.received()) == [1001, 1002, 1003, 1010]


def test_a_zip_of_several_files_is_refused_naming_them(bed: Bed) -> None:
    name = "badges_1.zip.gpg"
    data = zipped({"a.csv": GOOD, "b.csv": GOOD, "c.txt": b"notes"})
    reason = assert_rejected(bed, run(bed, name, data), name)
    assert reason.startswith(
        "the zip holds 3 files (a.csv, b.csv, c.txt); set zip_member: '<pattern>' to pick one"
    )


def test_zip_member_picks_the_one_file(bed: Bed) -> None:
    data = zipped({"readme.txt": b"x", "data/badges_7.csv": GOOD, "data/other.csv": b"y"})
    f = run(bed, "badges_2.zip.gpg", data, zip_member=r"badges_.*\.csv")
    assert (f["status"], f["rows_succeeded"]) == ("success", 3)
    assert sorted(r["customerId"] for r in bed.api.received()) == [1001, 1002, 1003]


def test_zip_member_matching_several_is_refused(bed: Bed) -> None:
    name = "badges_3.zip.gpg"
    data = zipped({"badges_a.csv": GOOD, "badges_b.csv": GOOD})
    reason = assert_rejected(bed, run(bed, name, data, zip_member=r"badges_.*"), name)
    assert reason.startswith("2 files in the zip match zip_member 'badges_.*'")


def test_a_zip_slip_entry_is_refused(bed: Bed) -> None:
    name = "badges_4.zip.gpg"
    data = zipped({"badges.csv": GOOD, "../../etc/cron.d/x": b"* * * * * root true\n"})
    reason = assert_rejected(bed, run(bed, name, data, zip_member="badges.csv"), name)
    assert "'../../etc/cron.d/x'" in reason and "zip-slip" in reason


def test_a_gzip_bomb_is_refused(bed: Bed) -> None:
    name = "badges_5.csv.gz.gpg"
    bomb = gzip.compress(GOOD + b"0" * (40 << 20), compresslevel=9)  # ~40 KiB -> 40 MiB
    reason = assert_rejected(bed, run(bed, name, bomb), name)
    assert "decompression bomb" in reason and "max_expansion_ratio (200x)" in reason


# -- the block's prepare() on real archives ----------------------------------------------------


def block(tmp_path: Path, **overrides: Any) -> SftpRead:
    values: dict[str, Any] = dict(
        name="src",
        hostname="127.0.0.1",
        username="u",
        password=SecretStr("p"),
        source_directory="/inbox",
        filename_pattern="x",
        processed_directory="/processed",
        error_directory="/errors",
        unzip_files=True,
    )
    values.update(overrides)
    return SftpRead(SftpReadConfig(**values), RunContext("t", EARNED_BADGES, tmp_path, tmp_path))


def file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "download"
    path.write_bytes(data)
    return path


def test_prepare_gunzips_streaming_and_removes_the_archive(tmp_path: Path) -> None:
    archive = file(tmp_path, gzip.compress(GOOD) + gzip.compress(b"BADGE-GOLD,1,x,y\n"))
    out = block(tmp_path).prepare(archive, tmp_path)
    assert out.read_bytes() == GOOD + b"BADGE-GOLD,1,x,y\n"  # both gzip members
    assert not archive.exists()


def test_prepare_refuses_a_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(GOOD * 100)
    with pytest.raises(FileRejected, match="not valid gzip data or is truncated"):
        block(tmp_path).prepare(file(tmp_path, data[: len(data) // 2]), tmp_path)
    assert not (tmp_path / "gunzipped").exists()


def test_prepare_refuses_a_zip_bomb_and_leaves_nothing(tmp_path: Path) -> None:
    bomb = zipped({"badges.csv": b"0" * (8 << 20)})
    with pytest.raises(FileRejected, match=r"unpacks to 8388608 bytes .*bomb"):
        block(tmp_path, max_expansion_ratio=50).prepare(file(tmp_path, bomb), tmp_path)
    assert not (tmp_path / "unzipped").exists()
    # the same archive passes with a ratio that allows it
    out = block(tmp_path, max_expansion_ratio=2000).prepare(file(tmp_path, bomb), tmp_path)
    assert out.stat().st_size == 8 << 20


def test_prepare_refuses_absolute_and_backslash_paths(tmp_path: Path) -> None:
    for evil in ("/etc/passwd", "..\\..\\x.csv", "C:/x.csv"):
        archive = zipped({"badges.csv": GOOD, evil: b"x"})
        with pytest.raises(FileRejected, match="zip-slip"):
            block(tmp_path, zip_member="badges.csv").prepare(file(tmp_path, archive), tmp_path)


def test_prepare_zip_member_matching_nothing_lists_the_files(tmp_path: Path) -> None:
    archive = zipped({"a.csv": GOOD, "b.csv": GOOD})
    with pytest.raises(FileRejected, match=r"no file in the zip matches zip_member 'c.*'.*a.csv"):
        block(tmp_path, zip_member="c.*").prepare(file(tmp_path, archive), tmp_path)


def test_prepare_leaves_other_files_and_is_off_by_default(tmp_path: Path) -> None:
    plain = file(tmp_path, GOOD)
    assert block(tmp_path).prepare(plain, tmp_path) == plain
    gz = file(tmp_path, gzip.compress(GOOD))
    assert block(tmp_path, unzip_files=False).prepare(gz, tmp_path) == gz


def test_zip_member_needs_unzip_files_and_a_valid_regex(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs unzip_files: true"):
        block(tmp_path, unzip_files=False, zip_member="a.*")
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        block(tmp_path, zip_member="(")


@pytest.mark.parametrize(
    ("original", "name"),
    [
        ("badges.csv.gz.gpg", "badges.csv"),
        ("badges.csv.gz", "badges.csv"),
        ("badges.CSV.GZ.PGP", "badges.CSV"),
        ("badges.zip.gpg", "badges"),
        ("x.gz", "x"),
        (".gz", ".gz"),
    ],
)
def test_error_file_name_strips_gz_too(original: str, name: str) -> None:
    assert error_file_name(original, "20261116093000") == f"result_20261116093000_{name}"
