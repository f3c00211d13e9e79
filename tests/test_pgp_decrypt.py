"""pgp_decrypt against the real gpg binary."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import SecretStr

from dataflow.block import RunContext
from dataflow.errors import FileRejected
from dataflow.sandbox import PgpKeys
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
    with pytest.raises(FileRejected, match="wrong passphrase"):
        block.apply(encrypted(pgp_keys, tmp_path), tmp_path)
    assert not (tmp_path / "decrypted").exists()


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
        "truncated": "truncated|corrupt",
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
