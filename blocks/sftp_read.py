"""sftp_read: take vendor files from an SFTP server, and put results back.

Example::

    - name: connect_to_source
      type: sftp_read
      hostname: sftp.vendor.example
      port: 22
      username: acme
      password: ${ACME_SFTP_PASSWORD}          # or private_key (+ key_passphrase)
      known_hosts: /etc/dataflow/known_hosts   # unknown or changed host keys are refused
      source_directory: /inbox
      filename_pattern: 'badges_.*\\.csv\\.gpg'  # full match on the base name
      search_recursively: false
      processed_directory: /processed
      error_directory: /errors
      unzip_files: true                        # unpack a zip or gzip after decryption
      zip_member: 'badges_.*\\.csv'             # which file of a zip holding several
      max_expansion_ratio: 200                 # refuse a decompression bomb
      ok_file: false                           # true: take X only once X.ok exists
      min_file_age_seconds: 30
      result_file: errors                      # or all: every row, its outcome and API id

`private_key` is an OpenSSH or PEM private key (RSA, ECDSA, Ed25519) as text, as the base64 of
that text (the form Connect+ stores), or ``${file:PATH}``. Host keys are checked against
`known_hosts` (``[host]:port`` entries for ports other than 22, as ``ssh-keyscan -p`` writes);
there is no option to skip the check. Uploads and moves never overwrite: a taken name gets a
``.<YYYYMMDDHHMMSS>`` suffix, and uploads are written under a hidden temporary name first.

`unzip_files: true` unpacks the file after decryption, streaming file to file: a zip (known by
its content) gives its one file, and a gzip file (``.gz``, e.g. ``badges.csv.gz.gpg``; also
several concatenated gzip members) its content; any other file is read as it is. A zip holding
several files is a file-level failure naming them, unless `zip_member` (a regular expression,
full match on the member's path in the zip or on its base name) picks exactly one; matching none
or several is a failure too. File-level failures as well: a zip entry whose path is absolute or
climbs out (``../x``, zip-slip, checked on every entry), a password-protected or damaged zip, a
truncated gzip, and a decompression bomb: a member or gzip file that unpacks to more than
`max_expansion_ratio` (default 200) times its compressed size and more than 1 MiB. The error
file's name drops ``.gz`` as it drops ``.gpg`` and ``.zip``.

`neutralize_formulas` (default true): in the error file written back here, a value that would
open as a spreadsheet formula (first character ``=``, ``+``, ``-``, ``@``, tab or CR, and not
a plain number) gets a leading ``'``; false writes the source's values raw.

Faults, in this block's own words (no library message or traceback reaches the user):

- a dropped connection or a server that stops answering (`timeout_seconds` to connect, four
  times that per operation) is retried on a new connection (twice); a download restarts from
  the beginning, an upload rewrites its temporary name. If that fails too the run stops and
  every file stays in `source_directory`; a temporary upload left by a lost connection is
  hidden (``.dataflow-...``), never listed, and replaced when the file is resumed.
- before the first file is taken (not in a dry run), a probe file is written, renamed and
  removed in `processed_directory` and `error_directory`: a directory the user cannot write
  stops the run there, before anything is sent, naming the directory. ``dataflow check`` runs
  the same probes (`probe_directory`), and also moves a probe out of `source_directory`
  (`probe_move`), without waiting for a file.
- a file the server will not let us read (permissions) is skipped with a warning: it stays
  where it is, is reported as a failure, and the next files go on.
- a full local disk while downloading stops the run (the file is kept); a full server disk
  while uploading the error file stops it too, with nothing half-written left there.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import io
import logging
import posixpath
import re
import socket
import stat
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator

from dataflow import keys
from dataflow.block import BlockConfig, RemoteFile, Source
from dataflow.digest import sha256_of
from dataflow.errorfile import local_write_error, timestamp
from dataflow.errors import AuthError, FatalError, FileRejected, FileSkipped
from dataflow.faults import crash_point

if TYPE_CHECKING:  # imported when the block opens: `dataflow validate` loads no crypto library
    import paramiko

log = logging.getLogger(__name__)

TEMP_PREFIX = ".dataflow-"
RECONNECTS = 2  # new connections tried after a dropped one, per operation
CHUNK = 32768
T = TypeVar("T")

# paramiko's transport thread logs what it sees (a reset connection, with a traceback) at
# ERROR; this block reports every fault in its own words, so paramiko's records are debug detail.
PARAMIKO_LOG = f"{__name__}.paramiko"


class _ParamikoToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


for _name in (PARAMIKO_LOG, f"{PARAMIKO_LOG}.sftp"):
    logging.getLogger(_name).addFilter(_ParamikoToDebug())
    logging.getLogger(_name).setLevel(logging.INFO)  # not paramiko's packet-level debug

_thread_hook = threading.excepthook


def _prefetch_died(args: threading.ExceptHookArgs) -> None:
    """paramiko's download read-ahead thread dies with the connection, and Python would print
    its traceback; the download itself reports the loss (and reconnects)."""
    name = args.thread.name if args.thread is not None else ""
    if name.endswith("(_prefetch_thread)") and args.exc_value is not None:
        log.debug("paramiko read-ahead thread ended: %r", args.exc_value)
        return
    _thread_hook(args)


threading.excepthook = _prefetch_died


class SftpReadConfig(BlockConfig):
    type: Literal["sftp_read"] = "sftp_read"
    hostname: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    key_passphrase: SecretStr | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    source_directory: str
    filename_pattern: str
    search_recursively: bool = False
    processed_directory: str
    error_directory: str
    unzip_files: bool = Field(
        default=False,
        description=(
            "unpack the file after decryption: a zip (its one file, or the one zip_member "
            "picks) or a gzip file (.gz), recognised by their content"
        ),
    )
    zip_member: str | None = Field(
        default=None,
        description=(
            "a regular expression (full match on the member's path in the zip, or its base "
            "name) that picks the one file to read from a zip holding several"
        ),
    )
    max_expansion_ratio: int = Field(
        default=200,
        ge=1,
        description=(
            "a zip member or gzip file that unpacks to more than this many times its "
            "compressed size (and more than 1 MiB) is refused as a decompression bomb"
        ),
    )
    ok_file: bool = False
    min_file_age_seconds: int = Field(default=0, ge=0)
    timeout_seconds: float = Field(default=30, gt=0)
    neutralize_formulas: bool = True
    result_file: Literal["errors", "all"] = Field(
        default="errors",
        description="errors: the error file (rejected and failed rows); all: every "
        "non-filtered row with its outcome and the API's id (earnedBadgeId or issuedId), "
        "same name and columns plus outcome,api_id",
    )

    @field_validator("filename_pattern", "zip_member")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        try:
            re.compile(value or "")
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("source_directory", "processed_directory", "error_directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must be an absolute path on the server, got {value!r}")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _zip_member_needs_unzip(self) -> SftpReadConfig:
        if self.zip_member is not None and not self.unzip_files:
            raise ValueError("zip_member picks a file inside a zip: it needs unzip_files: true")
        return self

    @model_validator(mode="after")
    def _credentials(self) -> SftpReadConfig:
        if self.password is None and self.private_key is None:
            raise ValueError("give password or private_key")
        if self.private_key is not None:
            check_private_key_text(self.private_key.get_secret_value(), self.key_passphrase)
        return self


def _key_block(text: str) -> str:
    found = keys.armored(text, ("PRIVATE KEY-----",))
    if found is None:
        raise ValueError("private_key is neither a PEM/OpenSSH key nor base64 of one")
    return found


def check_private_key_text(text: str, passphrase: SecretStr | None) -> None:
    """What can be told of a key from its text alone (validate loads no crypto library): its
    armor, and that an encrypted key has a passphrase. `load_private_key` does the rest when
    the block opens."""
    block = _key_block(text)
    try:
        encrypted = keys.ssh_key_encrypted(block)
    except ValueError as exc:
        raise ValueError(f"private_key {exc}") from None
    if encrypted and passphrase is None:
        raise ValueError("private_key is encrypted: set key_passphrase")


def load_private_key(text: str, passphrase: SecretStr | None) -> paramiko.PKey:
    """Parse an OpenSSH/PEM private key, or the base64 of one. Raises ValueError."""
    import paramiko

    text = _key_block(text)
    secret = passphrase.get_secret_value() if passphrase else None
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=secret)
        except paramiko.PasswordRequiredException:
            raise ValueError("private_key is encrypted: set key_passphrase") from None
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            errors.append(str(exc))
    wrong = any("passphrase" in e.lower() or "decrypt" in e.lower() for e in errors)
    if wrong or (secret is not None and keys.ssh_key_encrypted(text)):
        raise ValueError("key_passphrase does not unlock private_key")
    raise ValueError("private_key is not a readable RSA, ECDSA or Ed25519 private key")


class _LocalWriteFailed(Exception):
    """Writing the download to local disk failed: our problem, not the server's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _HashingWriter:
    """A file-like sink that hashes what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        try:
            written = self.target.write(data)
        except OSError as exc:
            raise _LocalWriteFailed(exc) from exc
        crash_point("downloading")
        return written


def connection_lost(exc: BaseException) -> bool:
    """A dropped connection or a server that stopped answering: worth a new connection."""
    import paramiko

    if isinstance(exc, (EOFError, TimeoutError, ConnectionError, paramiko.SSHException)):
        return True
    return isinstance(exc, OSError) and str(exc) == "Socket is closed"


def describe(exc: BaseException, timeout: float) -> str:
    """What went wrong, in our words (paramiko's messages and types stay out of sight)."""
    if isinstance(exc, TimeoutError):
        return f"the server did not answer within {timeout:g}s"
    if connection_lost(exc):
        return "the connection to the server was lost"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    text = str(exc)
    if text.startswith("size mismatch"):
        return "the server stored only part of it (its disk is probably full, or a quota reached)"
    if text == "Failure":  # SSH_FX_FAILURE: the server gives no reason
        return "the server refused without saying why (often a full disk or a quota)"
    return getattr(exc, "strerror", None) or text or type(exc).__name__


GZIP_MAGIC = b"\x1f\x8b"
MIN_EXPANSION_BOUND = 1 << 20  # a file may always unpack to 1 MiB, whatever its ratio
UNPACK_BLOCK = 1 << 20


@dataclass(frozen=True)
class _Expansion:
    """How far an archive may unpack before it is refused as a decompression bomb."""

    what: str
    compressed: int
    ratio: int
    bound: int

    def refusal(self, size: int | None = None) -> str:
        size_text = f"{size} bytes" if size is not None else f"more than {self.bound} bytes"
        return (
            f"the {self.what} unpacks to {size_text} from {self.compressed} bytes, more than "
            f"max_expansion_ratio ({self.ratio}x): refused as a possible decompression bomb; "
            "raise max_expansion_ratio if the file is genuine"
        )


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as fh:
        return fh.read(len(magic)) == magic


def _escapes(name: str) -> bool:
    """An archive entry path that is absolute or climbs out of its directory."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or bool(re.match(r"[A-Za-z]:", name))


def _names(entries: list[zipfile.ZipInfo], shown: int = 10) -> str:
    names = [e.filename for e in entries[:shown]]
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(names) + more


def _copy_bounded(src: IO[bytes] | gzip.GzipFile, out: Path, limit: _Expansion) -> None:
    """Stream `src` into `out`, refusing (FileRejected) past `limit.bound` bytes."""
    written = 0
    try:
        with out.open("wb") as dst:
            while block := src.read(UNPACK_BLOCK):
                written += len(block)
                if written > limit.bound:
                    raise FileRejected(limit.refusal())
                dst.write(block)
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            raise
        raise local_write_error(out, exc, f"the unpacked {limit.what}") from exc


class SftpRead(Source):
    Config = SftpReadConfig
    config: SftpReadConfig

    def __init__(self, config: SftpReadConfig, context: Any) -> None:
        super().__init__(config, context)
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pattern = re.compile(config.filename_pattern)

    # -- connection -------------------------------------------------------------------------

    @property
    def where(self) -> str:
        c = self.config
        return f"{c.username}@{c.hostname}:{c.port}"

    def open(self) -> None:
        import paramiko

        from dataflow_blocks._channel import open_sftp

        c = self.config
        known = self._known_host_keys()
        try:
            sock = socket.create_connection((c.hostname, c.port), timeout=c.timeout_seconds)
        except OSError as exc:
            raise FatalError(
                f"cannot connect to SFTP server {c.hostname}:{c.port}: {exc.strerror or exc}; "
                "check hostname, port and that the server is reachable"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.set_log_channel(PARAMIKO_LOG)
        self._transport = transport
        options = transport.get_security_options()
        # ask for a host key type we can verify
        preferred = [t for t in options.key_types if t in known]
        options.key_types = preferred + [t for t in options.key_types if t not in known]
        try:
            transport.start_client(timeout=c.timeout_seconds)
            self._verify_host_key(transport.get_remote_server_key(), known)
            self._authenticate(transport)
            self._sftp = open_sftp(transport)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            reason = describe(exc, c.timeout_seconds)
            if isinstance(exc, paramiko.SSHException):  # "Error reading SSH protocol banner"...
                reason = f"the SSH handshake did not complete within {c.timeout_seconds:g}s"
            raise FatalError(
                f"SFTP session with {self.where} failed: {reason}; check that the server is up "
                "and serves SFTP on that port"
            ) from exc
        except Exception:
            self.close()
            raise
        channel = self._sftp.get_channel() if self._sftp else None
        if channel is not None:
            channel.settimeout(c.timeout_seconds * 4)

    def _host_id(self) -> str:
        c = self.config
        return c.hostname if c.port == 22 else f"[{c.hostname}]:{c.port}"

    def _known_host_keys(self) -> dict[str, paramiko.PKey]:
        import paramiko

        path = Path(self.config.known_hosts).expanduser()
        if not path.is_absolute():
            path = self.context.base_dir / path
        try:
            keys = paramiko.HostKeys(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise FatalError(f"cannot read known_hosts {path}: {exc}") from exc
        entry = keys.lookup(self._host_id())
        if entry is None:
            c = self.config
            port = f" -p {c.port}" if c.port != 22 else ""
            raise FatalError(
                f"host key of {self._host_id()} is unknown: no entry in {path}. Fetch it with "
                f"'ssh-keyscan{port} {c.hostname} > host.keys', show its fingerprints with "
                "'ssh-keygen -lf host.keys', compare them with the fingerprint the vendor gives "
                f"you (by another channel), and only if they match: 'cat host.keys >> {path}'"
            )
        return {name: entry[name] for name in entry}

    def _verify_host_key(self, key: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
        expected = known.get(key.get_name())
        fingerprint = "SHA256:" + base64.b64encode(
            hashlib.sha256(key.asbytes()).digest()
        ).decode().rstrip("=")
        if expected is None:
            raise FatalError(
                f"host key of {self._host_id()} is unknown: the server offered "
                f"{key.get_name()} {fingerprint}, known_hosts has only {', '.join(known)}"
            )
        if expected.asbytes() != key.asbytes():
            raise FatalError(
                f"HOST KEY CHANGED for {self._host_id()}: the server offered {key.get_name()} "
                f"{fingerprint}, which is not the key in known_hosts. This may be an attack; "
                "refusing to connect. If the vendor changed the key, update known_hosts."
            )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        import paramiko

        c = self.config
        try:
            if c.private_key is not None:
                try:
                    pkey = load_private_key(c.private_key.get_secret_value(), c.key_passphrase)
                except ValueError as exc:  # our key: stop the run, keep every file
                    raise AuthError(f"block {c.name!r}: {exc}; fix private_key") from None
                transport.auth_publickey(c.username, pkey)
            if not transport.is_authenticated() and c.password is not None:
                transport.auth_password(c.username, c.password.get_secret_value())
        except paramiko.AuthenticationException as exc:
            raise AuthError(
                f"SFTP authentication failed for {self.where}: {type(exc).__name__}; "
                "check username and password/private_key"
            ) from exc

    def close(self) -> None:
        sftp, transport = self._sftp, self._transport
        self._sftp = self._transport = None
        if sftp is not None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                sftp.close()
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            raise FatalError("SFTP block used before open()")
        return self._sftp

    def _io(self, action: str, path: str, exc: BaseException) -> FatalError:
        reason = describe(exc, self.config.timeout_seconds * 4)
        hint = ""
        if isinstance(exc, PermissionError):
            hint = f"; the SFTP user {self.config.username} needs access to {path}"
        return FatalError(f"SFTP {action} {path} on {self.where} failed: {reason}{hint}")

    def _retrying(self, action: str, path: str, operation: Callable[[], T]) -> T:
        """Run `operation`; on a dropped connection, reconnect and run it again."""
        for attempt in range(RECONNECTS + 1):
            try:
                return operation()
            except (_LocalWriteFailed, FatalError, FileSkipped):
                raise
            except Exception as exc:
                if not connection_lost(exc) or attempt == RECONNECTS:
                    raise self._io(action, path, exc) from exc
                self._reconnect(action, path, exc, attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    def _reconnect(self, action: str, path: str, exc: BaseException, attempt: int) -> None:
        reason = describe(exc, self.config.timeout_seconds * 4)
        log.warning(
            "SFTP %s %s on %s: %s; reconnecting (%d of %d)",
            action,
            path,
            self.where,
            reason,
            attempt,
            RECONNECTS,
        )
        self.close()
        time.sleep(attempt)
        try:
            self.open()
        except FatalError as again:
            raise FatalError(
                f"SFTP {action} {path} on {self.where} failed: {reason}, and reconnecting "
                f"failed: {again}"
            ) from exc

    # -- listing ----------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        c = self.config
        entries: list[tuple[str, paramiko.SFTPAttributes]] = []
        self._walk(c.source_directory, entries)
        names = {p for p, _ in entries}
        now = time.time()
        found = []
        for path, attr in entries:
            name = posixpath.basename(path)
            if name.startswith(TEMP_PREFIX) or (c.ok_file and name.endswith(".ok")):
                continue
            if not self._pattern.fullmatch(name):
                continue
            mtime = int(attr.st_mtime or 0)
            if now - mtime < c.min_file_age_seconds:
                log.info(
                    "skipping %s: modified %ds ago (min_file_age_seconds=%d)",
                    path,
                    now - mtime,
                    c.min_file_age_seconds,
                )
                continue
            ok_path = None
            if c.ok_file:
                ok_path = path + ".ok"
                if ok_path not in names:
                    log.info("skipping %s: waiting for %s", path, posixpath.basename(ok_path))
                    continue
            found.append(RemoteFile(path, name, int(attr.st_size or 0), mtime, ok_path))
        found.sort(key=lambda f: (f.mtime, f.path))
        if found and not self.context.dry_run:
            for key in ("processed_directory", "error_directory"):
                self._check_writable(key)
        return found

    def _check_writable(self, key: str, after: str | None = None) -> None:
        """Write, rename and remove a probe file, so that a directory refusing writes or
        renames stops the run before anything is sent rather than after. `after` ends the
        message of a failure (default: what the run did about it)."""
        c = self.config
        directory = str(getattr(c, key))
        probe = posixpath.join(directory, f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}.tmp")
        renamed = probe[: -len(".tmp")] + ".renamed.tmp"

        def write_probe() -> None:
            self._ensure_dir(directory)
            with self.sftp.open(probe, "wb"):
                pass
            self.sftp.rename(probe, renamed)  # as error files are: a temp name, then renamed
            self.sftp.remove(renamed)

        try:
            self._retrying("write test in", directory, write_probe)
        except FatalError as exc:
            self._remove_quietly(probe)
            self._remove_quietly(renamed)
            if exc.__cause__ is None or connection_lost(exc.__cause__):
                raise
            if after is None:
                after = f"nothing was sent and every file stays in {c.source_directory}"
            raise FatalError(
                f"the SFTP user {c.username} cannot write to {key} {directory} on {self.where} "
                f"({describe(exc.__cause__, c.timeout_seconds)}): make it writable by "
                f"{c.username} (create, rename and delete files), or set {key} to a directory "
                f"that is; {after}"
            ) from exc

    # -- pre-flight (dataflow check) ----------------------------------------------------------

    def count_ready(self) -> int:
        """For ``dataflow check``: how many files `list_files` would take now (no probes)."""
        dry_run, self.context.dry_run = self.context.dry_run, True
        try:
            return len(self.list_files())
        finally:
            self.context.dry_run = dry_run

    def probe_directory(self, key: str) -> None:
        """For ``dataflow check``: the run's write test of `key`'s directory (a probe file
        written, renamed and removed). A directory that does not exist is created, as a run
        would, and removed again afterwards, so nothing stays. Raises FatalError."""
        created = self._missing(str(getattr(self.config, key)))
        try:
            self._check_writable(key, after="nothing was changed")
        finally:
            self._remove_dirs(created)

    def probe_move(self) -> None:
        """For ``dataflow check``: a probe file written in `source_directory`, moved into
        `processed_directory` (as every processed file is) and removed. Raises FatalError."""
        c = self.config
        name = f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}.tmp"
        probe = posixpath.join(c.source_directory, name)
        moved = posixpath.join(c.processed_directory, name)
        created = self._missing(c.processed_directory)
        step = f"a probe file in source_directory {c.source_directory}"
        try:
            self._ensure_dir(c.processed_directory)
            with self.sftp.open(probe, "wb"):
                pass
            step = f"the move of {probe} to processed_directory {c.processed_directory}"
            self.sftp.rename(probe, moved)
            step = f"the removal of {moved}"
            self.sftp.remove(moved)
        except FatalError:
            raise
        except Exception as exc:
            reason = describe(exc, c.timeout_seconds)
            raise FatalError(
                f"the SFTP user {c.username} cannot move files out of source_directory "
                f"{c.source_directory} on {self.where}: {step} failed ({reason}); every "
                f"processed file is moved from there, so ask the vendor to let {c.username} "
                f"create, rename and delete files in {c.source_directory}"
            ) from exc
        finally:
            self._remove_quietly(probe)
            self._remove_quietly(moved)
            self._remove_dirs(created)

    def _missing(self, directory: str) -> list[str]:
        """`directory` and those of its parents that do not exist, deepest first."""
        missing: list[str] = []
        while directory not in ("", "/") and not self._exists(directory):
            missing.append(directory)
            directory = posixpath.dirname(directory)
        return missing

    def _remove_dirs(self, directories: list[str]) -> None:
        for directory in directories:  # deepest first
            with contextlib.suppress(Exception):
                self.sftp.rmdir(directory)

    def _walk(self, directory: str, out: list[tuple[str, paramiko.SFTPAttributes]]) -> None:
        c = self.config
        attrs = self._retrying("listing", directory, lambda: self.sftp.listdir_attr(directory))
        skip = {c.processed_directory, c.error_directory}
        for attr in attrs:
            path = posixpath.join(directory, attr.filename)
            mode = attr.st_mode or 0
            if stat.S_ISDIR(mode):
                if c.search_recursively and path not in skip:
                    self._walk(path, out)
            elif stat.S_ISREG(mode):
                out.append((path, attr))

    # -- transfer ---------------------------------------------------------------------------

    def download(self, file: RemoteFile, dest: Path) -> str:
        """Stream to `dest` (from the start again after a reconnect); return the SHA-256."""
        try:
            writer, size = self._retrying(
                "download of", file.path, lambda: self._download_once(file, dest)
            )
        except _LocalWriteFailed as exc:
            raise local_write_error(dest, exc.error, f"the download of {file.path}") from exc
        log.info("downloaded %s (%d bytes)", file.path, size)
        return writer.sha256.hexdigest()

    def _download_once(self, file: RemoteFile, dest: Path) -> tuple[_HashingWriter, int]:
        try:
            remote = self.sftp.open(file.path, "rb")
        except PermissionError as exc:
            raise FileSkipped(
                f"cannot read {file.path} on {self.where}: permission denied; it was left where "
                f"it is: ask the vendor to make it readable by {self.config.username}"
            ) from exc
        try:
            fh = dest.open("wb")
        except OSError as exc:
            remote.close()
            raise _LocalWriteFailed(exc) from exc
        with remote, fh:
            writer = _HashingWriter(fh)
            remote.prefetch(remote.stat().st_size)
            size = 0
            while True:  # the empty read at the end is written too: a crash point after the last
                data = remote.read(CHUNK)  # block, before the download is reported done
                writer.write(data)
                size += len(data)
                if not data:
                    break
        return writer, size

    def prepare(self, path: Path, workdir: Path) -> Path:
        """With `unzip_files`: a zip's one file (or the one `zip_member` picks), or a gzip
        file's content, streamed file to file; anything else is left as it is."""
        if not self.config.unzip_files:
            return path
        if zipfile.is_zipfile(path):
            out = self._unzip(path, workdir / "unzipped")
        elif _starts_with(path, GZIP_MAGIC):
            out = self._gunzip(path, workdir / "gunzipped")
        else:
            return path
        path.unlink()
        return out

    def _unzip(self, path: Path, out: Path) -> Path:
        try:
            with zipfile.ZipFile(path) as archive:
                member = self._zip_member(archive.infolist())
                limit = self._expansion_limit(member.compress_size, "zip member")
                if member.file_size > limit.bound:
                    raise FileRejected(limit.refusal(member.file_size))
                with archive.open(member) as src:
                    _copy_bounded(src, out, limit)
        except FileRejected:
            out.unlink(missing_ok=True)
            raise
        except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required"
            out.unlink(missing_ok=True)
            raise FileRejected(
                "cannot unzip: the zip is password-protected; ask the vendor for an "
                "unprotected zip (the file itself is protected by PGP)"
            ) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            out.unlink(missing_ok=True)
            raise FileRejected(f"cannot unzip: the zip is damaged or unsupported ({exc})") from exc
        return out

    def _zip_member(self, entries: list[zipfile.ZipInfo]) -> zipfile.ZipInfo:
        """The one member to read; FileRejected for zip-slip paths or an ambiguous choice."""
        for entry in entries:
            if _escapes(entry.filename):
                raise FileRejected(
                    f"the zip holds an entry whose path leaves its directory "
                    f"({entry.filename!r}): refused (zip-slip)"
                )
        files = [e for e in entries if not e.is_dir()]
        pattern = self.config.zip_member
        if pattern is None:
            if len(files) == 1:
                return files[0]
            if not files:
                raise FileRejected("the zip holds no file")
            raise FileRejected(
                f"the zip holds {len(files)} files ({_names(files)}); set zip_member: "
                "'<pattern>' to pick one"
            )
        regex = re.compile(pattern)
        picked = [
            e
            for e in files
            if regex.fullmatch(e.filename) or regex.fullmatch(posixpath.basename(e.filename))
        ]
        if len(picked) == 1:
            return picked[0]
        if not picked:
            raise FileRejected(
                f"no file in the zip matches zip_member '{pattern}'; it holds {len(files)} "
                f"file(s): {_names(files) or 'none'}"
            )
        raise FileRejected(
            f"{len(picked)} files in the zip match zip_member '{pattern}' ({_names(picked)}); "
            "exactly one must: make the pattern narrower"
        )

    def _gunzip(self, path: Path, out: Path) -> Path:
        limit = self._expansion_limit(path.stat().st_size, "gzip file")
        try:
            with gzip.open(path, "rb") as src:
                _copy_bounded(src, out, limit)
        except FileRejected:
            out.unlink(missing_ok=True)
            raise
        except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
            out.unlink(missing_ok=True)
            raise FileRejected(
                f"cannot gunzip: the file is not valid gzip data or is truncated ({exc}); ask "
                "the vendor to resend it"
            ) from exc
        return out

    def _expansion_limit(self, compressed: int, what: str) -> _Expansion:
        ratio = self.config.max_expansion_ratio
        return _Expansion(what, compressed, ratio, max(ratio * compressed, MIN_EXPANSION_BOUND))

    def upload_error_file(self, local: Path, name: str, *, earlier: Collection[str] = ()) -> str:
        """Upload under a hidden temporary name, then rename to `name` (never overwriting).

        Idempotent: the temporary name is derived from `name` (a retry replaces a stale one),
        and a file with the same content already at `name` (or at a suffixed `name.<stamp>`,
        where a taken name sends it), or with one of the SHA-256 digests `earlier` (what an
        earlier attempt of an encrypted file uploaded), is an earlier attempt of this upload
        that completed (renames are atomic): it is not uploaded again.
        """
        directory = self.config.error_directory
        self._ensure_dir(directory)
        final = posixpath.join(directory, name)
        done = self._same_content(local, directory, name, set(earlier))
        if done is not None:
            return done
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        temp = posixpath.join(directory, f"{TEMP_PREFIX}{digest}.tmp")

        def put() -> None:
            with local.open("rb") as fh:
                self.sftp.putfo(fh, temp, confirm=True)  # rewrites the temp from the start

        try:
            self._retrying("upload of the error file to", temp, put)
        except FatalError:
            self._remove_quietly(temp)
            raise
        crash_point("error_temp")
        path = self._rename_unique(temp, final)
        crash_point("error_renamed")
        return path

    def _same_content(
        self, local: Path, directory: str, name: str, earlier: set[str]
    ) -> str | None:
        """The path of a file in `directory` named `name` (or `name.<suffix>`) whose bytes
        equal `local`'s, or whose SHA-256 is in `earlier`, if there is one (without
        `earlier`, sizes compared first; content only on a match)."""
        size = local.stat().st_size

        def candidates() -> list[str]:
            return [
                posixpath.join(directory, entry.filename)
                for entry in self.sftp.listdir_attr(directory)
                if (entry.filename == name or entry.filename.startswith(name + "."))
                and (earlier or entry.st_size == size)
            ]

        matches = self._retrying("listing of", directory, candidates)
        if not matches:
            return None
        wanted = {sha256_of(local), *earlier}
        for path in matches:
            remote = self._retrying("read of", path, functools.partial(self._remote_sha256, path))
            if remote in wanted:
                return path
        return None

    def _remote_sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.sftp.open(path, "rb") as remote:
            remote.prefetch()
            while block := remote.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()

    def move_original(self, file: RemoteFile, failed: bool) -> str:
        directory = self.config.error_directory if failed else self.config.processed_directory
        self._ensure_dir(directory)
        final = self._rename_unique(file.path, posixpath.join(directory, file.name))
        if file.ok_path is not None:
            try:
                self._rename_unique(file.ok_path, final + ".ok")
            except FatalError as exc:
                log.warning("could not move %s: %s", file.ok_path, exc)
        return final

    def _rename_unique(self, src: str, dst: str, reconnects: int = RECONNECTS) -> str:
        """Rename without ever overwriting: a taken name gets a timestamp suffix."""
        candidates = [dst, f"{dst}.{timestamp()}"]
        candidates += [f"{candidates[1]}-{i}" for i in range(1, 50)]
        for candidate in candidates:
            if self._exists(candidate):
                continue
            try:
                self.sftp.rename(src, candidate)  # SFTPv3 rename refuses to overwrite
                return candidate
            except Exception as exc:
                if connection_lost(exc) and reconnects > 0:
                    self._reconnect(f"rename to {candidate} of", src, exc, 1)
                    if not self._exists(src) and self._exists(candidate):
                        return candidate  # the rename was applied; its answer was lost
                    return self._rename_unique(src, dst, reconnects - 1)
                if connection_lost(exc):
                    raise self._io(f"rename to {candidate} of", src, exc) from exc
                if not isinstance(exc, OSError):
                    raise
                if self._exists(candidate):
                    continue  # lost a race for the name
                raise self._io(f"rename to {candidate} of", src, exc) from exc
        raise FatalError(f"no free name for {dst} on {self.where}")

    def _exists(self, path: str) -> bool:
        def stat() -> bool:
            try:
                self.sftp.stat(path)
            except FileNotFoundError:
                return False
            return True

        return self._retrying("stat of", path, stat)

    def _ensure_dir(self, directory: str) -> None:
        if self._exists(directory):
            return
        parent = posixpath.dirname(directory)
        if parent and parent != directory:
            self._ensure_dir(parent)
        try:
            self.sftp.mkdir(directory)
        except Exception as exc:
            if not isinstance(exc, OSError) and not connection_lost(exc):
                raise
            if not self._exists(directory):
                raise self._io("mkdir", directory, exc) from exc

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone; the name is hidden
            self.sftp.remove(path)

    @property
    def neutralize_formulas(self) -> bool:
        return self.config.neutralize_formulas

    @property
    def result_file(self) -> Literal["errors", "all"]:
        return self.config.result_file
