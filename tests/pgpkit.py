"""Real gpg for the signature and encrypted-output tests: fingerprints, signing, decrypting."""

from __future__ import annotations

from dataflow.sandbox import PgpKeys, _gpg, _gpg_home


def fingerprint(keys: PgpKeys) -> str:
    """The primary key's fingerprint (the sandbox keys all share one user id)."""
    listing = _gpg_listing(keys)
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def _gpg_listing(keys: PgpKeys) -> str:
    with _gpg_home() as home:
        _gpg(home, "--import", str(keys.public_key))
        return _gpg(home, "--with-colons", "--fingerprint", "--list-keys").decode()


def sign_and_encrypt(signer: PgpKeys, recipient: PgpKeys, data: bytes) -> bytes:
    """`gpg --sign --encrypt`: signed by `signer`'s key, encrypted to `recipient`'s."""
    to, by = fingerprint(recipient), fingerprint(signer)
    with _gpg_home() as home:
        _gpg(home, "--import", str(recipient.public_key))
        _gpg(home, "--passphrase", signer.passphrase, "--import", str(signer.private_key))
        return _gpg(
            home,
            "--trust-model",
            "always",
            "--passphrase",
            signer.passphrase,
            "--local-user",
            by,
            "--sign",
            "--encrypt",
            "--recipient",
            to,
            input=data,
        )


def tampered_signed(
    signer: PgpKeys, recipient: PgpKeys, data: bytes, old: bytes, new: bytes
) -> bytes:
    """Signed by `signer`, then `old` replaced by `new` in the signed data (same length), then
    encrypted to `recipient` without a new literal packet: the signature no longer verifies,
    the encryption itself is intact."""
    assert len(old) == len(new) and data.count(old) == 1
    with _gpg_home() as home:
        _gpg(home, "--import", str(recipient.public_key))
        _gpg(home, "--passphrase", signer.passphrase, "--import", str(signer.private_key))
        signed = _gpg(
            home,
            "--passphrase",
            signer.passphrase,
            "--compress-algo",
            "none",
            "--sign",
            input=data,
        )
        assert signed.count(old) == 1
        return _gpg(
            home,
            "--trust-model",
            "always",
            "--no-literal",
            "--compress-algo",
            "none",
            "--encrypt",
            "--recipient",
            fingerprint(recipient),
            input=signed.replace(old, new),
        )


def decrypt(keys: PgpKeys, data: bytes) -> bytes:
    """Decrypt with `keys`' secret key (as the vendor would)."""
    with _gpg_home() as home:
        _gpg(home, "--passphrase", keys.passphrase, "--import", str(keys.private_key))
        return _gpg(home, "--passphrase", keys.passphrase, "--decrypt", input=data)
