"""pgp_decrypt: decrypt a PGP file, file to file, with the real ``gpg`` binary.

Example::

    - name: decrypt
      type: pgp_decrypt
      enabled: true
      private_key: ${file:secrets/acme-private.asc}   # armored, or base64 of armored
      passphrase: ${ACME_PGP_PASSPHRASE}
      # optional, each the vendor's public key (armored, base64 of armored, or ${file:...}):
      # encrypt_outputs_to: ${file:secrets/acme-vendor-public.asc}
      # require_signature_from: ${file:secrets/acme-vendor-public.asc}

Each run gets its own throwaway GnuPG home (mode 700, a short path under /tmp because of the
agent's socket-path limit) with the agent's passphrase cache switched off, so a wrong
passphrase is never rescued by a cached right one; the agent is killed and the home removed
when the run ends. gpg writes into a temporary file that is deleted when decryption fails
(gpg leaves partial plaintext behind on corrupt or truncated input), so no partial plaintext
is ever processed. A signature on the file is not required; when present and made by a key
we do not hold, the file is still decrypted (integrity is guaranteed by the MDC check); a
signature gpg can check (by a key it holds) and that does not verify makes the file a failure.

`encrypt_outputs_to` (the vendor's public key: armored, base64 of armored, or ``${file:...}``;
checked at load time): every file written back to the server (the error file, a result file)
is encrypted to that key in the private workdir, then uploaded (atomically, as always) with
``.gpg`` added to its name, e.g. ``result_20261116093000_badges.csv.gpg``; no plaintext copy
reaches the server. A key gpg cannot encrypt to (expired, revoked, sign-only) stops the run at
the start, before any file is touched.

`require_signature_from` (a public key, same forms): a file is processed only if a signature
on it by that key (its primary key or a subkey, matched by the fingerprint of gpg's VALIDSIG
status line; the web of trust plays no part) verifies. Otherwise it is a file-level failure,
with the reason: "the file is not signed", "the file is signed by key X, not by the required
key Y", "the signature does not verify", or the required key is expired or revoked.

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

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator

from dataflow import keys
from dataflow.block import BlockConfig, ByteStream, FileStep
from dataflow.errors import FatalError, FileRejected

if TYPE_CHECKING:  # imported when the block opens: `dataflow validate` loads no crypto library
    import gnupg

log = logging.getLogger(__name__)

# gpg status keywords that mean the signature, not the decryption, had a problem
_SIGNATURE_ONLY = ("NO_PUBKEY", "ERRSIG")


class PgpDecryptConfig(BlockConfig):
    type: Literal["pgp_decrypt"] = "pgp_decrypt"
    private_key: SecretStr
    passphrase: SecretStr | None = None
    encrypt_outputs_to: str | None = Field(
        default=None,
        description=(
            "the vendor's PGP public key (armored, base64 of armored, or ${file:PATH}): every "
            "file written back to the server (the error file, the result file) is encrypted "
            "to it and its name gains .gpg; no plaintext copy reaches the server"
        ),
    )
    require_signature_from: str | None = Field(
        default=None,
        description=(
            "the vendor's PGP public key (armored, base64 of armored, or ${file:PATH}): a "
            "file not signed by this key (unsigned, signed by another key, or a signature "
            "that does not verify) is a file-level failure and goes to the error directory"
        ),
    )

    @field_validator("encrypt_outputs_to", "require_signature_from")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        if value is not None:
            armored_public_key(value)
        return value

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
    found = keys.armored(text, (_PRIVATE_BEGIN, _PUBLIC_BEGIN))
    if found is None:
        raise ValueError("not an armored PGP private key (nor base64 of one)")
    if _PRIVATE_BEGIN not in found:
        raise ValueError("this is a public key; decryption needs the private key")
    return found


_PUBLIC_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_PUBLIC_END = "-----END PGP PUBLIC KEY BLOCK-----"
_PRIVATE_BEGIN = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
_PUBLIC_KEY_PACKET = 6


def armored_public_key(text: str) -> str:
    """The armored public key from armored text or its base64. Raises ValueError."""
    found = keys.armored(text, (_PUBLIC_BEGIN, _PRIVATE_BEGIN))
    if found is None:
        raise ValueError("not an armored PGP public key (nor base64 of one)")
    if _PUBLIC_BEGIN not in found:
        raise ValueError(
            "this is a private key; give the vendor's public key (gpg --armor --export)"
        )
    if _first_packet(found) != _PUBLIC_KEY_PACKET:
        raise ValueError("the PGP public key block does not start with a public key")
    return found


def _first_packet(armored: str) -> int:
    """The tag of the first OpenPGP packet of an armored block. Raises ValueError."""
    try:
        data = keys.armor_body(armored, _PUBLIC_BEGIN, _PUBLIC_END)
    except ValueError as exc:
        raise ValueError(f"the PGP public key block {exc}") from None
    if not data or not data[0] & 0x80:
        raise ValueError("the PGP public key block holds no OpenPGP packets")
    return data[0] & 0x3F if data[0] & 0x40 else (data[0] >> 2) & 0x0F


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


BAD_SIGNATURE = (
    "the signature does not verify: the file was changed after it was signed, or the "
    "signature is damaged; ask the vendor to resend it"
)


def signature_problem(stderr: str, required: set[str], shown: str) -> str | None:
    """Why a decrypted file's signature does not satisfy `require_signature_from`, from gpg's
    status lines; None when a signature by a key in `required` (fingerprints of the primary
    key and its subkeys; `shown` names it) verifies. The web of trust plays no part."""
    if not any(_status(stderr, k) for k in ("NEWSIG", "GOODSIG", "BADSIG", "ERRSIG")):
        return (
            f"the file is not signed, but require_signature_from asks for a signature by key "
            f"{shown}; ask the vendor to sign it (gpg --sign --encrypt)"
        )
    if _status(stderr, "BADSIG"):
        return BAD_SIGNATURE
    signers = []
    for line in _status(stderr, "VALIDSIG"):
        fields = line.split()
        if set(fields[:1] + fields[9:10]) & required:
            return _signing_key_state(stderr, shown)
        signers += fields[:1]
    for line in _status(stderr, "ERRSIG"):  # a signer we do not hold: not the required key
        fields = line.split()
        fpr = fields[6] if len(fields) > 6 and fields[6] != "-" else ""
        signers.append(fpr or (fields[0] if fields else "?"))
    if not signers:
        return f"the signature could not be checked (gpg: {_last_error(stderr)})"
    return f"the file is signed by key {', '.join(signers)}, not by the required key {shown}"


def _signing_key_state(stderr: str, shown: str) -> str | None:
    """A good signature by the required key: still refused if that key expired or was revoked."""
    if _status(stderr, "REVKEYSIG"):
        return f"the file is signed by the required key {shown}, but that key is revoked"
    if _status(stderr, "EXPKEYSIG"):
        return f"the file is signed by the required key {shown}, but that key has expired"
    if _status(stderr, "EXPSIG"):
        return f"the file's signature by key {shown} has expired"
    return None


def classify_failure(stderr: str) -> str:
    """A plain reason, from gpg's status lines, why *this file* could not be decrypted."""
    if _status(stderr, "BADSIG"):
        return BAD_SIGNATURE
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
# No passphrase cache (a wrong passphrase is never rescued by a cached right one). The agent
# keeps the imported key re-protected by the passphrase in the throwaway home; its default
# protection is calibrated to ~100 ms of hashing on an idle core (measured ~1 s on a loaded
# 2-core machine) and is paid again at every unlock: the probe in open() and each file, as
# the cache is off. The minimum count (65536) makes that ~5 ms. It protects nothing more:
# the home is ours (mode 700) and lives for one run, and whoever can read it can read this
# process's passphrase too; the key as given in `private_key` keeps its own protection.
_AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\ns2k-count 65536\n"
_PROBE = b"dataflow: does the private key unlock?"


class PgpDecrypt(FileStep):
    Config = PgpDecryptConfig
    config: PgpDecryptConfig

    def __init__(self, config: PgpDecryptConfig, context: Any) -> None:
        super().__init__(config, context)
        self._home: str | None = None
        self._gpg: gnupg.GPG | None = None
        self._recipients: list[str] = []  # encrypt_outputs_to's primary fingerprints
        self._signers: set[str] = set()  # require_signature_from's primary and subkey fprs
        self._signer_shown = ""
        self.unchecked: str | None = None  # why open() could not check the passphrase

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
        Path(home, "gpg-agent.conf").write_text(_AGENT_CONF)
        try:
            import gnupg

            gpg = gnupg.GPG(gnupghome=home)
        except (OSError, ValueError, RuntimeError) as exc:
            raise self._fatal(f"cannot run gpg: {exc}; install GnuPG (Debian: gnupg)") from exc
        gpg.encoding = "utf-8"
        gpg.buffer_size = 1 << 20  # what python-gnupg copies into gpg's stdin at a time
        result = gpg.import_keys(armored_key(self.config.private_key.get_secret_value()))
        if not result.sec_imported:
            raise self._fatal(
                "private_key could not be imported into gpg "
                f"({result.summary() if hasattr(result, 'summary') else 'no secret key'})"
            )
        self._gpg = gpg
        self._check_key_unlocks(gpg, [str(f) for f in result.fingerprints])
        if self.config.require_signature_from is not None:
            primary = self._import_public(gpg, "require_signature_from")
            self._signers = set(primary) | _subkey_fingerprints(gpg, primary)
            self._signer_shown = ", ".join(primary)
        if self.config.encrypt_outputs_to is not None:
            self._recipients = self._import_public(gpg, "encrypt_outputs_to")
            self._check_can_encrypt(gpg)

    def _import_public(self, gpg: gnupg.GPG, key: str) -> list[str]:
        """Import the public key of setting `key`; its primary fingerprints."""
        text = armored_public_key(str(getattr(self.config, key)))
        try:
            result = gpg.import_keys(text)
        except (OSError, ValueError) as exc:
            raise self._fatal(f"cannot run gpg to import {key}: {exc}") from exc
        fingerprints = [str(f) for f in result.fingerprints if f]
        if not fingerprints:
            raise self._fatal(
                f"{key} could not be imported into gpg (gpg: {_last_error(result.stderr or '')}"
                "); give the vendor's armored public key (gpg --armor --export)"
            )
        return list(dict.fromkeys(fingerprints))

    def _check_can_encrypt(self, gpg: gnupg.GPG) -> None:
        """Encrypt a few bytes to encrypt_outputs_to: a key gpg will not encrypt to (expired,
        revoked, no encryption subkey) stops the run before any file is touched."""
        result = gpg.encrypt(
            _PROBE, self._recipients, always_trust=True, armor=False, extra_args=_GPG_ARGS
        )
        if not result.ok:
            raise self._fatal(
                f"gpg cannot encrypt to encrypt_outputs_to ({', '.join(self._recipients)}): "
                f"{_last_error(result.stderr or '')}; is the key expired or revoked, or without "
                "an encryption subkey? (checked before any file; every file was left in place)"
            )

    def _check_key_unlocks(self, gpg: gnupg.GPG, fingerprints: list[str]) -> None:
        """Encrypt a few bytes to our own key and decrypt them: a bad passphrase stops the
        run here, before any file is touched. A key gpg will not encrypt to (expired) is
        left to the files' decryption, which classifies the same failures."""
        encrypted = gpg.encrypt(_PROBE, fingerprints, always_trust=True, armor=False)
        if not encrypted.ok:
            self.unchecked = f"gpg will not encrypt to the key ({encrypted.status})"
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

    def protect_output(self, local: Path, name: str, workdir: Path) -> tuple[Path, str]:
        """With `encrypt_outputs_to`: `local` encrypted to the vendor's key, in `workdir`,
        named `name` + ``.gpg``; the plaintext stays in the private workdir."""
        if not self._recipients:
            return local, name
        if self._gpg is None:
            raise FatalError("pgp_decrypt used before open()")
        out = workdir / f"{local.name}.gpg"
        try:
            result = self._gpg.encrypt_file(
                str(local),
                self._recipients,
                always_trust=True,
                armor=False,
                output=str(out),
                extra_args=_GPG_ARGS,
            )
        except (OSError, ValueError) as exc:
            out.unlink(missing_ok=True)
            raise self._fatal(f"cannot run gpg to encrypt {name}: {exc}") from exc
        if not result.ok or not out.is_file():
            out.unlink(missing_ok=True)
            stderr = result.stderr or ""
            why = local_problem(stderr) or _last_error(stderr)
            raise self._fatal(
                f"encrypting {name} to encrypt_outputs_to failed: {why}; nothing was uploaded "
                "and the file is kept for the next run"
            )
        return out, f"{name}.gpg"

    reads_while_downloading = True  # gpg reads its stdin: it decrypts as the bytes come

    def apply(self, path: Path, workdir: Path) -> Path:
        """Decrypt `path` into `workdir`. A problem of ours (passphrase, disk, gpg itself) is
        a FatalError that keeps the file; only a problem of the file is a FileRejected."""
        if path.stat().st_size == 0:
            raise FileRejected("the file is empty (0 bytes): there is nothing to decrypt")
        out = self._decrypt(str(path), path, workdir)
        path.unlink()
        return out

    def apply_stream(self, stream: ByteStream, path: Path, workdir: Path) -> Path:
        """Decrypt the bytes of `path` as the download writes them (`stream`), into
        `workdir`; `path` stays (the pipeline checks the stream gave all of it)."""
        return self._decrypt(stream, path, workdir)

    def _decrypt(self, source: str | ByteStream, path: Path, workdir: Path) -> Path:
        """gpg's plaintext of `source` (the file `path`, or its bytes) in `workdir`."""
        if self._gpg is None:
            raise FatalError("pgp_decrypt used before open()")
        out = workdir / "decrypted"
        try:
            result = self._gpg.decrypt_file(
                source,
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
        if self._signers:
            problem = signature_problem(stderr, self._signers, self._signer_shown)
            if problem is not None:
                out.unlink(missing_ok=True)
                raise FileRejected(problem)
        elif result.returncode != 0:
            log.warning(
                "%s: signature not verified (signer's key unknown); decrypted anyway", path.name
            )
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


def _subkey_fingerprints(gpg: gnupg.GPG, primary: list[str]) -> set[str]:
    """The fingerprints of the subkeys of keys `primary` (a signature may be by a subkey)."""
    found: set[str] = set()
    for key in gpg.list_keys(keys=primary):
        for subkey in key.get("subkeys", []):
            if len(subkey) > 2 and subkey[2]:
                found.add(str(subkey[2]))
    return found


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
