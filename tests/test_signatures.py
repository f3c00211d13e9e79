"""require_signature_from: only a file signed by the vendor's key is processed.

End to end through the CLI with real gpg signatures (`gpg --sign --encrypt`), the real sshd and
the API emulator."""

from __future__ import annotations

import csv
import io
import shutil
from typing import Any

import pytest

from dataflow.sandbox import SAMPLE_HEADER, SAMPLE_ROWS, PgpKeys
from dataflow_blocks.pgp_decrypt import signature_problem

from .conftest import Bed
from .pgpkit import fingerprint, sign_and_encrypt, tampered_signed

NAME = "badges_2026-11-16.csv.gpg"
GOOD = ("\n".join([SAMPLE_HEADER, *SAMPLE_ROWS[:3]]) + "\n").encode()


@pytest.fixture(scope="module")
def third_keys(tmp_path_factory: pytest.TempPathFactory) -> PgpKeys:
    return PgpKeys(tmp_path_factory.mktemp("pgp-third"), "third-pass").generate()


def required(bed: Bed, vendor: PgpKeys) -> dict[str, Any]:
    shutil.copy(vendor.public_key, bed.dir / "vendor.asc")
    return {"require_signature_from": "${file:vendor.asc}"}


def run_rejected(bed: Bed, decrypt: dict[str, Any]) -> str:
    """Run on the inbox file; assert a file-level failure at decrypt; its reason."""
    code, report, stderr = bed.run_json(bed.config(decrypt=decrypt))
    assert code == 1, stderr
    (f,) = report["files"]
    assert f["status"] == "failure"
    assert f["processed_path"] == f"/errors/{NAME}"
    assert bed.sftp.files("inbox") == [] and bed.sftp.files("processed") == []
    error_name = f["error_file"].rsplit("/", 1)[1]
    assert bed.sftp.files("errors") == sorted([NAME, error_name])
    text = (bed.sftp.root / "errors" / error_name).read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 2 and rows[1][1] == "decrypt"
    assert f["reason"] in rows[1][3]
    assert bed.api.requests() == []
    return str(f["reason"])


def test_a_file_signed_by_the_required_key_is_processed(bed: Bed, other_pgp_keys: PgpKeys) -> None:
    bed.sftp.put(f"inbox/{NAME}", sign_and_encrypt(other_pgp_keys, bed.keys, GOOD))
    code, report, stderr = bed.run_json(bed.config(decrypt=required(bed, other_pgp_keys)))
    assert code == 0, stderr
    (f,) = report["files"]
    assert (f["status"], f["rows_succeeded"]) == ("success", 3)
    assert len(bed.api.received()) == 3


def test_an_unsigned_file_is_rejected(bed: Bed, other_pgp_keys: PgpKeys) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(GOOD))
    reason = run_rejected(bed, required(bed, other_pgp_keys))
    assert reason.startswith("the file is not signed")
    assert fingerprint(other_pgp_keys) in reason


@pytest.mark.parametrize("signer", ["third", "ours"])
def test_a_file_signed_by_another_key_is_rejected(
    bed: Bed, other_pgp_keys: PgpKeys, third_keys: PgpKeys, signer: str
) -> None:
    # "ours": our own key is in the keyring (we decrypt with it), so its signature verifies;
    # it is still not the vendor's
    keys = third_keys if signer == "third" else bed.keys
    bed.sftp.put(f"inbox/{NAME}", sign_and_encrypt(keys, bed.keys, GOOD))
    reason = run_rejected(bed, required(bed, other_pgp_keys))
    assert reason == (
        f"the file is signed by key {fingerprint(keys)}, not by the required key "
        f"{fingerprint(other_pgp_keys)}"
    )


def test_a_signature_that_does_not_verify_is_rejected(bed: Bed, other_pgp_keys: PgpKeys) -> None:
    data = tampered_signed(other_pgp_keys, bed.keys, GOOD, b"1002", b"9002")
    bed.sftp.put(f"inbox/{NAME}", data)
    reason = run_rejected(bed, required(bed, other_pgp_keys))
    assert reason.startswith("the signature does not verify")


def test_a_bad_signature_is_rejected_with_a_plain_reason_even_when_not_required(
    bed: Bed,
) -> None:
    # a signer whose key gpg holds (our own) is checked even without the setting; a signer it
    # does not hold cannot be checked, and is accepted (the next test)
    bed.sftp.put(f"inbox/{NAME}", tampered_signed(bed.keys, bed.keys, GOOD, b"1002", b"9002"))
    assert run_rejected(bed, {}).startswith("the signature does not verify")


def test_without_the_setting_any_signature_is_accepted(bed: Bed, third_keys: PgpKeys) -> None:
    bed.sftp.put(f"inbox/{NAME}", sign_and_encrypt(third_keys, bed.keys, GOOD))
    code, report, stderr = bed.run_json(bed.config())
    assert code == 0, stderr
    assert report["files"][0]["rows_succeeded"] == 3


def test_a_signature_by_a_subkey_of_the_required_key_counts() -> None:
    stderr = (
        "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1111222233334444 Vendor\n"
        "[GNUPG:] VALIDSIG SUBKEYFPR 2026-12-01 1796166853 0 4 0 22 10 00 PRIMARYFPR\n"
    )
    assert signature_problem(stderr, {"PRIMARYFPR"}, "PRIMARYFPR") is None
    assert signature_problem(stderr, {"OTHER"}, "OTHER") == (
        "the file is signed by key SUBKEYFPR, not by the required key OTHER"
    )
    expired = stderr.replace("GOODSIG", "EXPKEYSIG")
    assert "has expired" in str(signature_problem(expired, {"PRIMARYFPR"}, "PRIMARYFPR"))


def test_a_required_key_that_is_not_a_public_key_is_a_config_error(bed: Bed) -> None:
    (bed.dir / "vendor.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n")
    config = bed.config(decrypt={"require_signature_from": "${file:vendor.asc}"})
    result = bed.run("validate", str(config))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "require_signature_from" in out and "no END line" in out


def test_pgpkit_fingerprints_differ(other_pgp_keys: PgpKeys, pgp_keys: PgpKeys) -> None:
    assert fingerprint(other_pgp_keys) != fingerprint(pgp_keys)
