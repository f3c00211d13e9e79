"""pgp_decrypt against the real gpg binary."""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from dataflow.block import RunContext
from dataflow.errors import FatalError, FileRejected
from dataflow.sandbox import PgpKeys, _gpg, _gpg_home
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.pgp_decrypt import PgpDecrypt, PgpDecryptConfig

from .conftest import opened

PLAIN = b"badge_id,customer_id\n" + b"".join(b"B,%d\n" % i for i in range(1, 20000))


def make_block(
    keys: PgpKeys, tmp_path: Path, passphrase: str | None = None, private_key: str | None = None
) -> PgpDecrypt:
    config = PgpDecryptConfig(
        name="decrypt",
        private_key=SecretStr(private_key or keys.private_key.read_text()),
        passphrase=SecretStr(passphrase if passphrase is not None else keys.passphrase),
    )
    context = RunContext("t", EARNED_BADGES, tmp_path, tmp_path)
    return PgpDecrypt(config, context)


@pytest.fixture
def block(pgp_keys: PgpKeys, tmp_path: Path):  # type: ignore[no-untyped-def]
    with opened(make_block(pgp_keys, tmp_path)) as b:
        yield b


def encrypted(keys: PgpKeys, tmp_path: Path, data: bytes = PLAIN) -> Path:
    path = tmp_path / "in.gpg"
    path.write_bytes(keys.encrypt(data))
    return path


def test_decrypts_file_to_file(block: PgpDecrypt, pgp_keys: PgpKeys, tmp_path: Path) -> None:
    source = encrypted(pgp_keys, tmp_path)
    out = block.apply(source, tmp_path)
    assert out.read_bytes() == PLAIN
    assert not source.exists()  # the ciphertext is not kept twice


def test_base64_key_is_accepted(pgp_keys: PgpKeys, tmp_path: Path) -> None:
    b64 = base64.b64encode(pgp_keys.private_key.read_bytes()).decode()
    block = make_block(pgp_keys, tmp_path, private_key=b64)
    with opened(block):
        assert block.apply(encrypted(pgp_keys, tmp_path), tmp_path).read_bytes() == PLAIN


def test_wrong_passphrase_fails_even_after_a_right_one(
    block: PgpDecrypt, pgp_keys: PgpKeys, tmp_path: Path
) -> None:
    block.apply(encrypted(pgp_keys, tmp_path), tmp_path).unlink()
    # same keyring and agent: an agent cache would let the wrong passphrase through
    block.config = block.config.model_copy(update={"passphrase": SecretStr("not-it")})
    source = encrypted(pgp_keys, tmp_path)
    # our passphrase, not the file: the run stops and the file stays
    with pytest.raises(FatalError, match="the passphrase does not unlock the private key"):
        block.apply(source, tmp_path)
    assert not (tmp_path / "decrypted").exists()
    assert source.exists()


def test_file_for_another_key(block: PgpDecrypt, other_pgp_keys: PgpKeys, tmp_path: Path) -> None:
    with pytest.raises(FileRejected, match="encrypted for a key we do not hold"):
        block.apply(encrypted(other_pgp_keys, tmp_path), tmp_path)


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "not_pgp"])
def test_damaged_input_leaves_no_partial_plaintext(
    block: PgpDecrypt, pgp_keys: PgpKeys, tmp_path: Path, damage: str
) -> None:
    source = encrypted(pgp_keys, tmp_path)
    data = bytearray(source.read_bytes())
    if damage == "corrupt":
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0x5A
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray(PLAIN)
    source.write_bytes(bytes(data))
    expected = {
        "corrupt": "corrupt|decryption failed",
        "truncated": "the file is truncated or corrupt",
        "not_pgp": "not PGP data",
    }[damage]
    with pytest.raises(FileRejected, match=expected):
        block.apply(source, tmp_path)
    assert not (tmp_path / "decrypted").exists()


def test_close_kills_the_agent_and_removes_the_home(pgp_keys: PgpKeys, tmp_path: Path) -> None:
    block = make_block(pgp_keys, tmp_path)
    block.open()
    home = block._home
    assert home is not None and Path(home).is_dir()
    assert oct(Path(home).stat().st_mode & 0o777) == "0o700"
    block.apply(encrypted(pgp_keys, tmp_path), tmp_path)
    block.close()
    assert not Path(home).exists()
    assert not [cmd for cmd in process_command_lines() if "gpg-agent" in cmd and home in cmd]


def process_command_lines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return out


def test_public_key_is_a_config_error(pgp_keys: PgpKeys) -> None:
    with pytest.raises(ValueError, match="this is a public key"):
        PgpDecryptConfig(name="d", private_key=SecretStr(pgp_keys.public_key.read_text()))


# -- whose fault: ours stops the run (FatalError), the file's rejects it (FileRejected) ------


def test_open_finds_a_wrong_passphrase_before_any_file(pgp_keys: PgpKeys, tmp_path: Path) -> None:
    block = make_block(pgp_keys, tmp_path, passphrase="not-the-passphrase")
    try:
        with pytest.raises(FatalError, match="the passphrase does not unlock the private key"):
            block.open()
    finally:
        block.close()


def test_open_finds_a_missing_passphrase(pgp_keys: PgpKeys, tmp_path: Path) -> None:
    config = PgpDecryptConfig(
        name="decrypt", private_key=SecretStr(pgp_keys.private_key.read_text())
    )
    block = PgpDecrypt(config, RunContext("t", EARNED_BADGES, tmp_path, tmp_path))
    try:
        with pytest.raises(FatalError, match="protected by a passphrase and none was given"):
            block.open()
    finally:
        block.close()


def test_the_passphrase_check_is_cheap(pgp_keys: PgpKeys, tmp_path: Path) -> None:
    """The check in open() costs about one key unlock on top of the first file's."""
    timings = []
    for check in (False, True):
        block = make_block(pgp_keys, tmp_path)
        if not check:
            block._check_key_unlocks = lambda *args: None  # type: ignore[method-assign]
        started = time.monotonic()
        with opened(block):
            block.apply(encrypted(pgp_keys, tmp_path), tmp_path).unlink()
        timings.append(time.monotonic() - started)
    without, with_check = timings
    # one extra key unlock: ~0.1 s idle, ~0.8 s on a 2-core box under load 5; bound generous
    assert with_check - without < 3.0, timings


def test_missing_gpg_binary_is_ours(
    pgp_keys: PgpKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gpg, no gpgconf
    block = make_block(pgp_keys, tmp_path)
    try:
        with pytest.raises(FatalError, match=r"cannot run gpg.*install GnuPG"):
            block.open()
    finally:
        block.close()  # must not raise without gpgconf either
    assert block._home is None


def test_passphrase_with_a_line_break_is_a_config_error(pgp_keys: PgpKeys) -> None:
    with pytest.raises(ValueError, match="contains a line break"):
        PgpDecryptConfig(
            name="d",
            private_key=SecretStr(pgp_keys.private_key.read_text()),
            passphrase=SecretStr("two\nlines"),
        )


def gpg_output(keys: list[PgpKeys], *args: str, secret: PgpKeys | None = None) -> bytes:
    """`gpg ARGS` over PLAIN in a throwaway home holding `keys` (and `secret`'s private key)."""
    with _gpg_home() as home:
        for key in keys:
            _gpg(home, "--import", str(key.public_key))
        if secret is not None:
            _gpg(home, "--passphrase", secret.passphrase, "--import", str(secret.private_key))
            args = ("--passphrase", secret.passphrase, *args)
        return _gpg(home, "--trust-model", "always", *args, input=PLAIN)


def fingerprint(keys: PgpKeys) -> str:
    """The primary key's fingerprint (both test key pairs share one user id)."""
    with _gpg_home() as home:
        listing = _gpg(
            home, "--with-colons", "--import-options", "show-only", "--import", str(keys.public_key)
        )
    return next(ln.split(":")[9] for ln in listing.decode().splitlines() if ln.startswith("fpr:"))


def apply_to(block: PgpDecrypt, tmp_path: Path, data: bytes) -> Path:
    source = tmp_path / "in.gpg"
    source.write_bytes(data)
    return block.apply(source, tmp_path)


def test_encrypted_to_two_keys_ours_among_them(
    block: PgpDecrypt, pgp_keys: PgpKeys, other_pgp_keys: PgpKeys, tmp_path: Path
) -> None:
    ours, theirs = fingerprint(pgp_keys), fingerprint(other_pgp_keys)
    data = gpg_output([other_pgp_keys, pgp_keys], "-e", "-r", theirs, "-r", ours)
    assert apply_to(block, tmp_path, data).read_bytes() == PLAIN


def test_encrypted_to_two_keys_and_signed_by_a_stranger(
    block: PgpDecrypt, pgp_keys: PgpKeys, other_pgp_keys: PgpKeys, tmp_path: Path
) -> None:
    # the other key appears as NO_SECKEY, the signer as NO_PUBKEY: still ours to decrypt
    ours, theirs = fingerprint(pgp_keys), fingerprint(other_pgp_keys)
    stranger = gpg_output(
        [pgp_keys, other_pgp_keys], "-e", "-r", theirs, "-r", ours, "--sign", secret=other_pgp_keys
    )
    assert apply_to(block, tmp_path, stranger).read_bytes() == PLAIN


def test_armored_file(block: PgpDecrypt, pgp_keys: PgpKeys, tmp_path: Path) -> None:
    data = gpg_output([pgp_keys], "--armor", "-e", "-r", pgp_keys.uid)
    assert data.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert apply_to(block, tmp_path, data).read_bytes() == PLAIN


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("signed", "the file is signed but not encrypted, so nothing was decrypted"),
        ("clearsigned", "the file is signed but not encrypted, so nothing was decrypted"),
        ("stored", "the file is OpenPGP data but not encrypted, so nothing was decrypted"),
        ("symmetric", r"encrypted with a password \(symmetric encryption\), not to our public"),
        # the vendor's password happens to be our passphrase: still not encrypted to our key
        ("symmetric_same", r"encrypted with a password \(symmetric encryption\), not to our"),
        ("empty", r"the file is empty \(0 bytes\)"),
        ("truncated_early", "the file is truncated or corrupt"),
        ("other_key", r"encrypted for a key we do not hold \(key id [0-9A-F]{16}\)"),
        # bytes gpg reads as a broken packet (NODATA 3), but no encrypted message began
        ("random_bytes", r"the file is not PGP data \(no valid OpenPGP packets found\)"),
    ],
)
def test_not_decryptable_by_us_is_the_file_s_problem(
    block: PgpDecrypt,
    pgp_keys: PgpKeys,
    other_pgp_keys: PgpKeys,
    tmp_path: Path,
    kind: str,
    expected: str,
) -> None:
    make = {
        "signed": lambda: gpg_output([], "--sign", secret=other_pgp_keys),
        "clearsigned": lambda: gpg_output([], "--clearsign", secret=other_pgp_keys),
        "stored": lambda: gpg_output([], "--store"),
        "symmetric": lambda: gpg_output([], "--passphrase", "vendor-pw", "-c"),
        "symmetric_same": lambda: gpg_output([], "--passphrase", pgp_keys.passphrase, "-c"),
        "empty": lambda: b"",
        "truncated_early": lambda: pgp_keys.encrypt(PLAIN)[:120],
        "other_key": lambda: other_pgp_keys.encrypt(PLAIN),
        "random_bytes": lambda: random.Random(3).randbytes(50_000),
    }
    with pytest.raises(FileRejected, match=expected) as caught:
        apply_to(block, tmp_path, make[kind]())
    assert "signature" not in str(caught.value).lower() or kind.endswith("signed")
    assert not (tmp_path / "decrypted").exists()  # no plaintext goes on, even when gpg wrote it
