"""sftp_read against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dataflow.block import RunContext
from dataflow.errors import AuthError, FatalError, FileRejected
from dataflow.sandbox import SftpServer
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.sftp_read import SftpRead, SftpReadConfig

from .conftest import opened


def make(sftp: SftpServer, tmp_path: Path, **overrides: Any) -> SftpRead:
    values: dict[str, Any] = dict(
        name="src",
        hostname="127.0.0.1",
        port=sftp.port,
        username=sftp.user,
        password=SecretStr(sftp.password),
        known_hosts=str(sftp.known_hosts),
        source_directory="/inbox",
        filename_pattern=r"badges_.*\.csv",
        processed_directory="/processed",
        error_directory="/errors",
    )
    values.update(overrides)
    return SftpRead(SftpReadConfig(**values), RunContext("t", EARNED_BADGES, tmp_path, tmp_path))


@pytest.fixture
def src(sftp: SftpServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    with opened(make(sftp, tmp_path)) as block:
        yield block


def test_lists_by_full_match_oldest_first(src: SftpRead, sftp: SftpServer) -> None:
    sftp.put("inbox/badges_2.csv", b"b", age_seconds=100)
    sftp.put("inbox/badges_1.csv", b"a", age_seconds=200)
    sftp.put("inbox/xbadges_3.csv", b"c")
    sftp.put("inbox/badges_4.csv.bak", b"d")
    assert [f.name for f in src.list_files()] == ["badges_1.csv", "badges_2.csv"]


def test_min_age_recursion_and_ok_files(sftp: SftpServer, tmp_path: Path) -> None:
    (sftp.root / "inbox" / "sub").mkdir()
    os.chown(sftp.root / "inbox" / "sub", *(2 * [os.stat(sftp.root / "inbox").st_uid]))
    sftp.put("inbox/badges_old.csv", b"x", age_seconds=600)
    sftp.put("inbox/badges_fresh.csv", b"x", age_seconds=0)
    sftp.put("inbox/sub/badges_deep.csv", b"x", age_seconds=600)
    block = make(sftp, tmp_path, min_file_age_seconds=60, search_recursively=True)
    with opened(block):
        assert [f.path for f in block.list_files()] == [
            "/inbox/badges_old.csv",
            "/inbox/sub/badges_deep.csv",
        ]
    block = make(sftp, tmp_path, ok_file=True)
    with opened(block):
        assert block.list_files() == []
        sftp.put("inbox/badges_old.csv.ok", b"")
        (file,) = block.list_files()
        assert file.ok_path == "/inbox/badges_old.csv.ok"
        block.move_original(file, failed=False)
        assert sftp.files("processed") == ["badges_old.csv", "badges_old.csv.ok"]


def test_download_streams_and_hashes(src: SftpRead, sftp: SftpServer, tmp_path: Path) -> None:
    data = os.urandom(8 << 20)
    sftp.put("inbox/badges_big.csv", data)
    (file,) = src.list_files()
    digest = src.download(file, tmp_path / "dl")
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "dl").read_bytes() == data


def test_uploads_are_atomic_and_never_overwrite(
    src: SftpRead, sftp: SftpServer, tmp_path: Path
) -> None:
    local = tmp_path / "e.csv"
    local.write_text("a,b\n")
    first = src.upload_error_file(local, "result_x.csv")
    assert first == "/errors/result_x.csv"
    # asked again for the same content (a resumed run): the earlier upload is the answer
    assert src.upload_error_file(local, "result_x.csv") == first
    other = tmp_path / "other.csv"
    other.write_text("c,d\n")  # same size, other content: a new name, nothing overwritten
    second = src.upload_error_file(other, "result_x.csv")
    assert second.startswith("/errors/result_x.csv.") and len(second) == len(first) + 15
    assert src.upload_error_file(other, "result_x.csv") == second  # found under its suffix
    assert (sftp.root / "errors" / "result_x.csv").read_text() == "a,b\n"
    assert [n for n in sftp.files("errors") if n.startswith(".dataflow-")] == []


def test_an_earlier_attempts_digest_names_its_upload(
    src: SftpRead, sftp: SftpServer, tmp_path: Path
) -> None:
    # an encrypted error file: the resumed attempt has other bytes (and maybe another size)
    first, again = tmp_path / "a.gpg", tmp_path / "b.gpg"
    first.write_bytes(b"ciphertext of the first attempt")
    again.write_bytes(b"the second attempt's, longer ciphertext")
    uploaded = src.upload_error_file(first, "result_y.csv.gpg")
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert src.upload_error_file(again, "result_y.csv.gpg", earlier={digest}) == uploaded
    assert sftp.files("errors") == ["result_y.csv.gpg"]
    # a digest of something else is no answer: uploaded under a suffix, nothing overwritten
    other = src.upload_error_file(again, "result_y.csv.gpg", earlier={"0" * 64})
    assert other.startswith("/errors/result_y.csv.gpg.")
    assert (sftp.root / "errors" / "result_y.csv.gpg").read_bytes() == first.read_bytes()


def test_unknown_and_changed_host_keys_are_refused(sftp: SftpServer, tmp_path: Path) -> None:
    empty = tmp_path / "kh"
    empty.write_text("")
    with pytest.raises(FatalError, match=r"is unknown: no entry .*ssh-keyscan -p"):
        make(sftp, tmp_path, known_hosts=str(empty)).open()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    kind, key = (tmp_path / "k.pub").read_text().split()[:2]
    changed = tmp_path / "kh2"
    changed.write_text(f"[127.0.0.1]:{sftp.port} {kind} {key}\n")
    with pytest.raises(FatalError, match="HOST KEY CHANGED"):
        make(sftp, tmp_path, known_hosts=str(changed)).open()


def test_wrong_password_is_an_auth_error(sftp: SftpServer, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="authentication failed") as info:
        make(sftp, tmp_path, password=SecretStr("wrong-password")).open()
    assert "wrong-password" not in str(info.value)


@pytest.mark.parametrize("form", ["openssh", "pem", "base64"])
def test_private_key_auth(sftp: SftpServer, tmp_path: Path, form: str) -> None:
    key = tmp_path / "id"
    extra = ["-m", "PEM", "-t", "rsa", "-b", "2048"] if form == "pem" else ["-t", "ed25519"]
    subprocess.run(["ssh-keygen", "-q", *extra, "-N", "key-pass", "-f", str(key)], check=True)
    sftp.authorize_key((tmp_path / "id.pub").read_text())
    text = key.read_text()
    if form == "base64":
        text = base64.b64encode(text.encode()).decode()
    block = make(
        sftp,
        tmp_path,
        password=None,
        private_key=SecretStr(text),
        key_passphrase=SecretStr("key-pass"),
    )
    with opened(block):
        assert block.list_files() == []


def test_encrypted_key_without_passphrase_is_a_config_error(tmp_path: Path) -> None:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(key)], check=True)
    with pytest.raises(ValueError, match="private_key is encrypted: set key_passphrase"):
        SftpReadConfig(
            name="s",
            hostname="h",
            username="u",
            private_key=SecretStr(key.read_text()),
            source_directory="/i",
            filename_pattern="x",
            processed_directory="/p",
            error_directory="/e",
        )


def test_unzip(sftp: SftpServer, tmp_path: Path) -> None:
    block = make(sftp, tmp_path, unzip_files=True)
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as z:
        z.writestr("inner.csv", "a,b\n1,2\n")
    assert block.prepare(one, tmp_path).read_text() == "a,b\n1,2\n"
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a.csv", "x")
        z.writestr("b.csv", "y")
    with pytest.raises(FileRejected, match=r"holds 2 files \(a.csv, b.csv\); set zip_member"):
        block.prepare(two, tmp_path)
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"a,b\n")
    assert block.prepare(plain, tmp_path) == plain


@pytest.mark.parametrize("kind", ["ed25519", "rsa-pem"])
def test_key_checks_at_validate_are_textual_and_a_wrong_passphrase_stops_at_open(
    sftp: SftpServer, tmp_path: Path, kind: str
) -> None:
    key = tmp_path / "id"
    args = ["-t", "ed25519"] if kind == "ed25519" else ["-t", "rsa", "-b", "2048", "-m", "PEM"]
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "pw-secret", "-f", str(key)], check=True)
    text = key.read_text()
    for given in (text, base64.b64encode(text.encode()).decode()):  # armored, or its base64
        with pytest.raises(ValueError, match="private_key is encrypted: set key_passphrase"):
            make(sftp, tmp_path, password=None, private_key=SecretStr(given))
    block = make(
        sftp, tmp_path, password=None, private_key=SecretStr(text), key_passphrase=SecretStr("no")
    )  # valid as far as text can tell: the passphrase is proven when the block opens
    wrong = "key_passphrase does not unlock private_key"
    with pytest.raises(AuthError, match=wrong), opened(block):
        pass


def test_a_key_that_is_not_armored_is_a_config_error(tmp_path: Path, sftp: SftpServer) -> None:
    with pytest.raises(ValueError, match="neither a PEM/OpenSSH key nor base64 of one"):
        make(sftp, tmp_path, password=None, private_key=SecretStr("not a key at all"))
