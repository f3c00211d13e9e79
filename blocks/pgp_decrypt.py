"""pgp_decrypt: decrypt a PGP file, file to file, with the real ``gpg`` binary.

Example::

    - name: decrypt
      type: pgp_decrypt
      enabled: true
      private_key: ${file:secrets/acme-private.asc}   # armored, or base64 of armored
      passphrase: ${ACME_PGP_PASSPHRASE}

Each run gets its own throwaway GnuPG home (mode 700, a short path under /tmp because of the
agent's socket-path limit) with the agent's passphrase cache switched off, so a wrong
passphrase is never rescued by a cached right one; the agent is killed and the home removed
when the run ends. gpg writes into a temporary file that is deleted when decryption fails
(gpg leaves partial plaintext behind on corrupt or truncated input), so no partial plaintext
is ever processed. A signature on the file is not required; when present and made by a key
we do not hold, the file is still decrypted (integrity is guaranteed by the MDC check).

Whose fault, read from gpg's status lines:

- ours, a `FatalError` that stops the run and leaves every file where it is: the passphrase
  does not unlock the key (``ERROR pkdecrypt_failed`` with code & 0xFFFF == 11) or is missing,
  the key cannot be imported, gpg cannot run, the local disk is full or a directory is not
  writable (gpg says DECRYPTION_OKAY even when it could not write the plaintext). `open()`
  encrypts a few bytes to our own key and decrypts them, so a bad passphrase is found before
  any file is touched (about one key unlock: ~0.1 s);
- the file's, a `FileRejected`: empty, not PGP data, truncated or corrupt (NODATA after the
  packets began, BADMDC), encrypted to another key only (NO_SECKEY), encrypted with a password
  (symmetric) instead of to our key, or signed or stored but not encrypted. A file encrypted
  to several keys, ours among them, is decrypted; armored input is accepted.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

import gnupg
from pydantic import SecretStr, field_validator

from dataflow.block import BlockConfig, FileStep
from dataflow.errors import FatalError, FileRejected

log = logging.getLogger(__name__)

# gpg status keywords that mean the signature, not the decryption, had a problem
_SIGNATURE_ONLY = ("NO_PUBKEY", "ERRSIG")


class PgpDecryptConfig(BlockConfig):
    type: Literal["pgp_decrypt"] = "pgp_decrypt"
    private_key: SecretStr
    passphrase: SecretStr | None = None

    @field_validator("private_key")
    @classmethod
    def _armored(cls, value: SecretStr) -> SecretStr:
        armored_key(value.get_secret_value())
        return value

    @field_validator("passphrase")
    @classmethod
    def _one_line(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and any(c in value.get_secret_value() for c in "\r\n"):
            raise ValueError("the passphrase contains a line break, which gpg cannot take")
        return value


def armored_key(text: str) -> str:
    """The armored key from armored text or its base64. Raises ValueError."""
    text = text.strip()
    if "-----BEGIN PGP PRIVATE KEY BLOCK-----" in text:
        return text
    try:
        decoded = base64.b64decode(text, validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    if "-----BEGIN PGP PRIVATE KEY BLOCK-----" in decoded:
        return decoded
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in text + decoded:
        raise ValueError("this is a public key; decryption needs the private key")
    raise ValueError("not an armored PGP private key (nor base64 of one)")


# error codes (low 16 bits of gpg's ERROR lines) that mean *our* key could not be used
_BAD_PASSPHRASE = 11
_NO_PASSPHRASE = {85, 99, 177}  # no pinentry, cancelled, no passphrase given

# our machine, not the file: a full disk, a read-only or forbidden directory
_LOCAL_PROBLEMS = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "File too large",
    "Input/output error",
)


def _codes(stderr: str, keyword: str) -> list[int]:
    """The error codes of ``[GNUPG:] ERROR <keyword> <code>`` lines, low 16 bits."""
    codes = []
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "ERROR" and parts[2] == keyword:
            try:
                codes.append(int(parts[3].split("_")[0]) & 0xFFFF)
            except ValueError:
                continue
    return codes


def _status(stderr: str, keyword: str) -> list[str]:
    """The arguments of every ``[GNUPG:] <keyword> ...`` line."""
    prefix = f"[GNUPG:] {keyword}"
    return [
        line[len(prefix) :].strip()
        for line in stderr.splitlines()
        if line == prefix or line.startswith(prefix + " ")
    ]


def local_problem(stderr: str) -> str | None:
    """gpg's own line about a local resource (disk full, permissions), if any."""
    for line in stderr.splitlines():
        if line.startswith("gpg:") and any(p in line for p in _LOCAL_PROBLEMS):
            return line[4:].strip()
    return None


def our_key_problem(stderr: str, passphrase_given: bool = True) -> str | None:
    """Why our private key could not decrypt (passphrase), or None when that is not it."""
    codes = _codes(stderr, "pkdecrypt_failed")  # not symkey_decrypt: a symmetric file's password
    if _BAD_PASSPHRASE in codes or _status(stderr, "BAD_PASSPHRASE"):
        return "the passphrase does not unlock the private key; fix passphrase"
    missing = _NO_PASSPHRASE & set(codes) or (codes and not passphrase_given)
    if missing or _status(stderr, "MISSING_PASSPHRASE"):
        return "the private key is protected by a passphrase and none was given; set passphrase"
    return None


def classify_failure(stderr: str) -> str:
    """A plain reason, from gpg's status lines, why *this file* could not be decrypted."""
    encrypted_to = _status(stderr, "ENC_TO")
    if not encrypted_to and _status(stderr, "NEED_PASSPHRASE_SYM"):
        return (
            "the file is encrypted with a password (symmetric encryption), not to our public "
            "key; ask the vendor to encrypt it to our public key"
        )
    if (
        not encrypted_to
        and not _status(stderr, "BEGIN_DECRYPTION")
        and _status(stderr, "PLAINTEXT")
    ):
        if _status(stderr, "NEWSIG"):
            return (
                "the file is signed but not encrypted, so nothing was decrypted; ask the vendor "
                "to encrypt it to our public key"
            )
        return (
            "the file is OpenPGP data but not encrypted, so nothing was decrypted; ask the "
            "vendor to encrypt it to our public key"
        )
    missing = _status(stderr, "NO_SECKEY")
    if missing and not _status(stderr, "DECRYPTION_KEY"):
        keys = ", ".join(m.split()[0] for m in missing if m)
        return (
            f"the file is encrypted for a key we do not hold (key id {keys}); ask the vendor "
            "which public key they used, or configure the matching private_key"
        )
    if _status(stderr, "BADMDC") or "integrity check" in stderr.lower():
        return (
            "the file is truncated or corrupt (integrity check failed); ask the vendor to resend it"
        )
    nodata = _status(stderr, "NODATA")
    if nodata and encrypted_to:  # an encrypted message began, then broke off
        return (
            "the file is truncated or corrupt (its PGP data breaks off); ask the vendor to "
            "resend it"
        )
    if nodata:
        return "the file is not PGP data (no valid OpenPGP packets found); is it encrypted?"
    if "truncated" in stderr.lower() or "premature" in stderr.lower():
        return "the file is truncated or corrupt; ask the vendor to resend it"
    if _codes(stderr, "pkdecrypt_failed"):
        return (
            "the file's session key could not be decrypted with our key (gpg: "
            f"{_last_error(stderr)}); the file may be corrupt: ask the vendor to resend it"
        )
    return "decryption failed: " + _last_error(stderr)


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("gpg:")]
    return lines[-1][4:].strip() if lines else "unknown gpg error"


HOME_PREFIX = "dfg"


def remove_stale_homes() -> None:
    """GnuPG homes of runs that were killed: stop their agent, remove the home."""
    for path in Path("/tmp").glob(f"{HOME_PREFIX}*-*"):
        pid = path.name[len(HOME_PREFIX) :].split("-", 1)[0]
        if not (path.is_dir() and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its run is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_agent(str(path))
        shutil.rmtree(path, ignore_errors=True)


def _kill_agent(home: str) -> None:
    try:
        subprocess.run(
            ["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
            check=False,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # gpgconf missing or stuck
        log.warning("could not stop the gpg-agent of %s: %s", home, exc)


_GPG_ARGS = ["--batch", "--yes", "--no-tty"]
_PROBE = b"dataflow: does the private key unlock?"


class PgpDecrypt(FileStep):
    Config = PgpDecryptConfig
    config: PgpDecryptConfig

    def __init__(self, config: PgpDecryptConfig, context: Any) -> None:
        super().__init__(config, context)
        self._home: str | None = None
        self._gpg: gnupg.GPG | None = None

    @classmethod
    def remove_leftovers(cls) -> None:
        remove_stale_homes()

    @property
    def _passphrase(self) -> str | None:
        passphrase = self.config.passphrase
        return passphrase.get_secret_value() if passphrase else None

    def _fatal(self, what: str) -> FatalError:
        return FatalError(f"block {self.config.name!r}: {what}")

    def open(self) -> None:
        # short: the agent's socket path is limited to ~108 bytes; the pid marks the owner
        home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-", dir="/tmp")
        self._home = home
        Path(home, "gpg-agent.conf").write_text(
            "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n"
        )
        try:
            gpg = gnupg.GPG(gnupghome=home)
        except (OSError, ValueError, RuntimeError) as exc:
            raise self._fatal(f"cannot run gpg: {exc}; install GnuPG (Debian: gnupg)") from exc
        gpg.encoding = "utf-8"
        result = gpg.import_keys(armored_key(self.config.private_key.get_secret_value()))
        if not result.sec_imported:
            raise self._fatal(
                "private_key could not be imported into gpg "
                f"({result.summary() if hasattr(result, 'summary') else 'no secret key'})"
            )
        self._gpg = gpg
        self._check_key_unlocks(gpg, [str(f) for f in result.fingerprints])

    def _check_key_unlocks(self, gpg: gnupg.GPG, fingerprints: list[str]) -> None:
        """Encrypt a few bytes to our own key and decrypt them: a bad passphrase stops the
        run here, before any file is touched. A key gpg will not encrypt to (expired) is
        left to the files' decryption, which classifies the same failures."""
        encrypted = gpg.encrypt(_PROBE, fingerprints, always_trust=True, armor=False)
        if not encrypted.ok:
            log.info(
                "%s: could not check the passphrase in advance (%s); the first file will",
                self.config.name,
                encrypted.status,
            )
            return
        try:
            result = gpg.decrypt(encrypted.data, passphrase=self._passphrase, extra_args=_GPG_ARGS)
        except (OSError, ValueError) as exc:
            raise self._fatal(f"cannot run gpg to check the private key: {exc}") from exc
        stderr = result.stderr or ""
        if result.ok and result.data == _PROBE:
            return
        reason = our_key_problem(stderr, bool(self._passphrase)) or (
            "the private key cannot decrypt what is encrypted to it (gpg: "
            f"{_last_error(stderr)}); check private_key and passphrase"
        )
        raise self._fatal(f"{reason} (checked before any file; every file was left in place)")

    def close(self) -> None:
        if self._home is None:
            return
        _kill_agent(self._home)
        shutil.rmtree(self._home, ignore_errors=True)
        self._home = None
        self._gpg = None

    def apply(self, path: Path, workdir: Path) -> Path:
        """Decrypt `path` into `workdir`. A problem of ours (passphrase, disk, gpg itself) is
        a FatalError that keeps the file; only a problem of the file is a FileRejected."""
        if self._gpg is None:
            raise FatalError("pgp_decrypt used before open()")
        if path.stat().st_size == 0:
            raise FileRejected("the file is empty (0 bytes): there is nothing to decrypt")
        out = workdir / "decrypted"
        try:
            result = self._gpg.decrypt_file(
                str(path),
                passphrase=self._passphrase,
                output=str(out),
                always_trust=True,
                extra_args=_GPG_ARGS,
            )
        except (OSError, ValueError) as exc:
            out.unlink(missing_ok=True)
            raise self._fatal(f"cannot run gpg: {exc}") from exc
        stderr = result.stderr or ""
        if not _decrypted(result, stderr):
            out.unlink(missing_ok=True)  # gpg leaves partial plaintext behind
            raise self._failure(path, workdir, stderr)
        if result.returncode != 0:
            log.warning(
                "%s: signature not verified (signer's key unknown); decrypted anyway", path.name
            )
        path.unlink()
        return out

    def _failure(self, path: Path, workdir: Path, stderr: str) -> FatalError | FileRejected:
        local = local_problem(stderr)
        if local is not None:
            return self._fatal(
                f"decrypting {path.name} failed on this machine: {local}; free space or fix "
                f"the permissions of the temp directory ({workdir.parent}), then run again"
            )
        ours = our_key_problem(stderr, bool(self._passphrase))
        if ours is not None:
            return self._fatal(ours)
        return FileRejected(classify_failure(stderr))


def _decrypted(result: Any, stderr: str) -> bool:
    """Decrypted with our key, complete and intact (a signature we cannot check is fine)."""
    if local_problem(stderr) is not None:
        return False  # gpg says DECRYPTION_OKAY even when it could not write the plaintext
    if not (_status(stderr, "DECRYPTION_KEY") and _status(stderr, "DECRYPTION_OKAY")):
        return False  # not encrypted to our key: symmetric, signed only, or not decrypted
    if result.returncode == 0 and result.ok:
        return True
    # a valid decryption whose only problem is an unverifiable signature
    # (NO_SECKEY may name another recipient of a file we could decrypt: not a failure)
    failed = any(k in stderr for k in ("DECRYPTION_FAILED", "BADMDC", "NODATA"))
    return not failed and "GOODMDC" in stderr and any(k in stderr for k in _SIGNATURE_ONLY)
