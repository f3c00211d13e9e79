"""encrypt_outputs_to: every file written back to the server is encrypted to the vendor's key.

End to end through the CLI against the real sshd, gpg and the API emulator."""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dataflow.sandbox import SAMPLE_HEADER, SAMPLE_ROWS, PgpKeys, sample_csv
from dataflow_blocks.pgp_decrypt import PgpDecryptConfig, armored_public_key

from .conftest import Bed
from .pgpkit import decrypt

NAME = "badges_2026-11-16.csv.gpg"


def vendor_key(bed: Bed, vendor: PgpKeys) -> dict[str, Any]:
    shutil.copy(vendor.public_key, bed.dir / "vendor.asc")
    return {"encrypt_outputs_to": "${file:vendor.asc}"}


def server_files(bed: Bed) -> dict[str, bytes]:
    """Every file on the SFTP server, in every directory, by its path."""
    root = bed.sftp.root
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def rows_of(text: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.decode("utf-8"))))


def test_error_file_reaches_the_server_only_encrypted_to_the_vendor(
    bed: Bed, other_pgp_keys: PgpKeys
) -> None:
    # the same file through a plain dataflow first: the reference error file
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    code, plain_report, stderr = bed.run_json(bed.config(name="plain"))
    assert code == 3, stderr
    plain_error = plain_report["files"][0]["error_file"]
    expected = rows_of((bed.sftp.root / plain_error.lstrip("/")).read_bytes())
    (bed.sftp.root / plain_error.lstrip("/")).unlink()
    (bed.sftp.root / "processed" / NAME).unlink()
    bed.api.reset()

    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    code, report, stderr = bed.run_json(bed.config(decrypt=vendor_key(bed, other_pgp_keys)))
    assert code == 3, stderr
    (f,) = report["files"]
    assert f["status"] == "partial" and f["rows_rejected"] == 5 and f["rows_failed"] == 1
    assert re.fullmatch(r"/errors/result_\d{14}_badges_2026-11-16\.csv\.gpg", f["error_file"])

    files = server_files(bed)
    assert sorted(files) == [f["error_file"].lstrip("/"), f"processed/{NAME}"]
    ciphertext = files[f["error_file"].lstrip("/")]
    # the vendor's secret key opens it, and it holds exactly the plain run's rows
    assert rows_of(decrypt(other_pgp_keys, ciphertext)) == expected
    assert expected[0][-4:] == ["LINE_NO", "error_stage", "status_code", "error_message"]
    assert len(expected) == 7
    # no plaintext anywhere on the server: neither a name nor a row of the error file
    for path, content in files.items():
        assert not path.endswith(".csv"), path
        for row in expected[1:]:
            assert row[-1].encode() not in content
        for value in ("LINE_NO", *SAMPLE_HEADER.split(","), *SAMPLE_ROWS[7].split(",")[:2]):
            assert value.encode() not in content, (path, value)
    # our own key cannot read it: it is encrypted to the vendor only
    with pytest.raises(RuntimeError, match="decrypt"):
        decrypt(bed.keys, ciphertext)


def test_a_file_level_failure_is_reported_encrypted_too(bed: Bed, other_pgp_keys: PgpKeys) -> None:
    bed.sftp.put(f"inbox/{NAME}", b"this is not PGP data at all\n")
    code, report, stderr = bed.run_json(bed.config(decrypt=vendor_key(bed, other_pgp_keys)))
    assert code == 1, stderr
    (f,) = report["files"]
    assert f["status"] == "failure" and "not PGP data" in f["reason"]
    assert f["error_file"].endswith("_badges_2026-11-16.csv.gpg")
    assert sorted(server_files(bed)) == sorted([f["error_file"].lstrip("/"), f"errors/{NAME}"])
    rows = rows_of(decrypt(other_pgp_keys, (bed.sftp.root / f["error_file"][1:]).read_bytes()))
    assert rows[0] == ["LINE_NO", "error_stage", "status_code", "error_message"]
    assert len(rows) == 2 and rows[1][1] == "decrypt" and "not PGP data" in rows[1][3]
    assert bed.api.requests() == []


def test_without_the_setting_the_error_file_is_plain(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", b"this is not PGP data at all\n")
    code, report, _ = bed.run_json(bed.config())
    assert code == 1
    assert report["files"][0]["error_file"].endswith("_badges_2026-11-16.csv")


def test_a_key_that_is_not_a_public_key_is_a_config_error(
    bed: Bed, other_pgp_keys: PgpKeys
) -> None:
    shutil.copy(other_pgp_keys.private_key, bed.dir / "vendor.asc")
    config = bed.config(decrypt={"encrypt_outputs_to": "${file:vendor.asc}"})
    result = bed.run("validate", str(config))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "encrypt_outputs_to" in out and "this is a private key" in out
    assert other_pgp_keys.private_key.read_text().splitlines()[3] not in out

    (bed.dir / "vendor.asc").write_text("hello")
    result = bed.run("validate", str(config))
    assert result.returncode == 2
    assert "not an armored PGP public key" in result.stdout + result.stderr


def test_public_key_forms(other_pgp_keys: PgpKeys, pgp_keys: PgpKeys) -> None:
    armored = other_pgp_keys.public_key.read_text()
    assert armored_public_key(base64.b64encode(armored.encode()).decode()) == armored.strip()
    assert armored_public_key(armored.replace("\n", "\r\n")).startswith("-----BEGIN")
    broken = armored.replace(armored.splitlines()[3], "!!!!" + armored.splitlines()[3][4:])
    with pytest.raises(ValueError, match="damaged"):
        armored_public_key(broken)
    with pytest.raises(ValueError, match="no END line"):
        armored_public_key("\n".join(armored.splitlines()[:5]))
    with pytest.raises(ValidationError, match="private key"):
        PgpDecryptConfig(
            name="d",
            private_key=pgp_keys.private_key.read_text(),
            encrypt_outputs_to=pgp_keys.private_key.read_text(),
        )


def test_a_key_gpg_cannot_encrypt_to_stops_the_run_before_any_file(
    bed: Bed, tmp_path: Path
) -> None:
    from dataflow.sandbox import _gpg, _gpg_home

    with _gpg_home() as home:  # a sign-only key: no encryption subkey
        _gpg(
            home,
            "--passphrase",
            "",
            "--quick-generate-key",
            "Sign Only <s@x.invalid>",
            "ed25519",
            "sign",
            "never",
        )
        (bed.dir / "vendor.asc").write_bytes(_gpg(home, "--armor", "--export", "s@x.invalid"))
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    code, report, stderr = bed.run_json(
        bed.config(decrypt={"encrypt_outputs_to": "${file:vendor.asc}"})
    )
    assert code == 1, stderr
    assert "cannot encrypt to encrypt_outputs_to" in report["reason"]
    assert bed.sftp.files("inbox") == [NAME] and bed.api.requests() == []


def test_a_crash_after_the_encrypted_error_file_is_renamed_uploads_it_once(
    bed: Bed, other_pgp_keys: PgpKeys
) -> None:
    # the window between the rename on the server and its checkpoint: the next run encrypts
    # the same rows again (new bytes: gpg's session key is random) and must know it is there
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    config = bed.config(decrypt=vendor_key(bed, other_pgp_keys))
    killed = bed.run("run", str(config), "--json", env={"DATAFLOW_CRASH_AT": "error_renamed"})
    assert killed.returncode == -9, killed.stderr
    (first,) = bed.sftp.files("errors")
    code, report, stderr = bed.run_json(config)
    assert code == 3, stderr
    assert bed.sftp.files("errors") == [first]  # one error file, not a suffixed second
    (f,) = report["files"]
    assert f["error_file"] == f"/errors/{first}"
    assert len(rows_of(decrypt(other_pgp_keys, (bed.sftp.root / "errors" / first).read_bytes())))
    assert bed.sftp.files("processed") == [NAME] and bed.sftp.files("inbox") == []
