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


def classify_failure(stderr: str) -> str:
    """A plain reason from gpg's status lines."""
    if "NO_SECKEY" in stderr:
        return (
            "the file is encrypted for a key we do not hold (gpg: NO_SECKEY); ask the "
            "vendor which public key they used, or configure the matching private_key"
        )
    if "BAD_PASSPHRASE" in stderr or "pkdecrypt_failed" in stderr or "MISSING_PASSPHRASE" in stderr:
        for line in stderr.splitlines():
            if "pkdecrypt_failed" in line:
                try:
                    code = int(line.split()[-1])
                except ValueError:
                    continue
                if code & 0xFFFF == 11:
                    return "wrong passphrase for the private key (check passphrase)"
        return "the private key could not be unlocked (check passphrase)"
    if "BADMDC" in stderr or "integrity check" in stderr.lower():
        return "the file is corrupt (integrity check failed); ask the vendor to resend it"
    if "NODATA" in stderr:
        return "the file is not PGP data (no OpenPGP packets found); is it encrypted?"
    if "truncated" in stderr.lower() or "premature" in stderr.lower():
        return "the file is truncated; ask the vendor to resend it"
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
    subprocess.run(
        ["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
        check=False,
        capture_output=True,
        timeout=30,
    )


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
            raise FatalError(f"cannot run gpg: {exc}; install GnuPG (Debian: gnupg)") from exc
        gpg.encoding = "utf-8"
        result = gpg.import_keys(armored_key(self.config.private_key.get_secret_value()))
        if not result.sec_imported:
            raise FatalError(
                f"block {self.config.name!r}: private_key could not be imported into gpg "
                f"({result.summary() if hasattr(result, 'summary') else 'no secret key'})"
            )
        self._gpg = gpg

    def close(self) -> None:
        if self._home is None:
            return
        _kill_agent(self._home)
        shutil.rmtree(self._home, ignore_errors=True)
        self._home = None
        self._gpg = None

    def apply(self, path: Path, workdir: Path) -> Path:
        if self._gpg is None:
            raise FatalError("pgp_decrypt used before open()")
        out = workdir / "decrypted"
        passphrase = self.config.passphrase
        result = self._gpg.decrypt_file(
            str(path),
            passphrase=passphrase.get_secret_value() if passphrase else None,
            output=str(out),
            always_trust=True,
            extra_args=["--batch", "--yes", "--no-tty"],
        )
        stderr = result.stderr or ""
        if not _decrypted(result, stderr):
            out.unlink(missing_ok=True)  # gpg leaves partial plaintext behind
            raise FileRejected(classify_failure(stderr))
        if result.returncode != 0:
            log.warning(
                "%s: signature not verified (signer's key unknown); decrypted anyway", path.name
            )
        path.unlink()
        return out


def _decrypted(result: Any, stderr: str) -> bool:
    if result.returncode == 0 and result.ok:
        return True
    # a valid decryption whose only problem is an unverifiable signature
    failed = any(k in stderr for k in ("DECRYPTION_FAILED", "BADMDC", "NODATA", "NO_SECKEY"))
    return (
        not failed
        and "DECRYPTION_OKAY" in stderr
        and "GOODMDC" in stderr
        and any(k in stderr for k in _SIGNATURE_ONLY)
    )
