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
      unzip_files: false
      ok_file: false                           # true: take X only once X.ok exists
      min_file_age_seconds: 30

`private_key` is an OpenSSH or PEM private key (RSA, ECDSA, Ed25519) as text, as the base64 of
that text (the form Connect+ stores), or ``${file:PATH}``. Host keys are checked against
`known_hosts` (``[host]:port`` entries for ports other than 22, as ``ssh-keyscan -p`` writes);
there is no option to skip the check. Uploads and moves never overwrite: a taken name gets a
``.<YYYYMMDDHHMMSS>`` suffix, and uploads are written under a hidden temporary name first.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import posixpath
import re
import socket
import stat
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Literal

import paramiko
from pydantic import Field, SecretStr, field_validator, model_validator

from dataflow.block import BlockConfig, RemoteFile, Source
from dataflow.errors import AuthError, FatalError, FileRejected
from dataflow.faults import crash_point

log = logging.getLogger(__name__)

TEMP_PREFIX = ".dataflow-"


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
    unzip_files: bool = False
    ok_file: bool = False
    min_file_age_seconds: int = Field(default=0, ge=0)
    timeout_seconds: float = Field(default=30, gt=0)

    @field_validator("filename_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
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
    def _credentials(self) -> SftpReadConfig:
        if self.password is None and self.private_key is None:
            raise ValueError("give password or private_key")
        if self.private_key is not None:
            load_private_key(self.private_key.get_secret_value(), self.key_passphrase)
        return self


def load_private_key(text: str, passphrase: SecretStr | None) -> paramiko.PKey:
    """Parse an OpenSSH/PEM private key, or the base64 of one. Raises ValueError."""
    text = text.strip()
    if "-----BEGIN" not in text:
        try:
            text = base64.b64decode(text, validate=False).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("private_key is neither a PEM/OpenSSH key nor base64 of one") from None
    secret = passphrase.get_secret_value() if passphrase else None
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=secret)
        except paramiko.PasswordRequiredException:
            raise ValueError("private_key is encrypted: set key_passphrase") from None
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            errors.append(str(exc))
    if any("passphrase" in e.lower() or "decrypt" in e.lower() for e in errors):
        raise ValueError("key_passphrase does not unlock private_key")
    raise ValueError("private_key is not a readable RSA, ECDSA or Ed25519 private key")


class _HashingWriter:
    """A file-like sink that hashes what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        written = self.target.write(data)
        crash_point("downloading")
        return written


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
        self._transport = transport
        options = transport.get_security_options()
        # ask for a host key type we can verify
        preferred = [t for t in options.key_types if t in known]
        options.key_types = preferred + [t for t in options.key_types if t not in known]
        try:
            transport.start_client(timeout=c.timeout_seconds)
            self._verify_host_key(transport.get_remote_server_key(), known)
            self._authenticate(transport)
            self._sftp = paramiko.SFTPClient.from_transport(transport)
        except paramiko.SSHException as exc:
            self.close()
            raise FatalError(f"SFTP session with {self.where} failed: {exc}") from exc
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
                f"host key of {self._host_id()} is unknown: no entry in {path}. Verify the "
                f"server's fingerprint with the vendor, then add it: ssh-keyscan{port} "
                f"{c.hostname} >> {path}"
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
        c = self.config
        try:
            if c.private_key is not None:
                pkey = load_private_key(c.private_key.get_secret_value(), c.key_passphrase)
                transport.auth_publickey(c.username, pkey)
            if not transport.is_authenticated() and c.password is not None:
                transport.auth_password(c.username, c.password.get_secret_value())
        except paramiko.AuthenticationException as exc:
            raise AuthError(
                f"SFTP authentication failed for {self.where}: {type(exc).__name__}; "
                "check username and password/private_key"
            ) from exc

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            raise FatalError("SFTP block used before open()")
        return self._sftp

    def _io(self, action: str, path: str, exc: Exception) -> FatalError:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return FatalError(f"SFTP {action} {path} on {self.where} failed: {reason}")

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
        return found

    def _walk(self, directory: str, out: list[tuple[str, paramiko.SFTPAttributes]]) -> None:
        c = self.config
        try:
            attrs = self.sftp.listdir_attr(directory)
        except OSError as exc:
            raise self._io("listing", directory, exc) from exc
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
        with dest.open("wb") as fh:
            writer = _HashingWriter(fh)
            try:
                size = self.sftp.getfo(file.path, writer)  # type: ignore[arg-type]
            except (OSError, paramiko.SSHException) as exc:
                raise self._io("download of", file.path, exc) from exc
        log.info("downloaded %s (%d bytes)", file.path, size)
        return writer.sha256.hexdigest()

    def prepare(self, path: Path, workdir: Path) -> Path:
        """Unzip when `unzip_files` is on and the file is a zip holding one file."""
        if not (self.config.unzip_files and zipfile.is_zipfile(path)):
            return path
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise FileRejected(
                        f"the zip archive holds {len(members)} files; exactly one is expected"
                    )
                out = workdir / "unzipped"
                with archive.open(members[0]) as src, out.open("wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
            raise FileRejected(f"cannot unzip: {exc}") from exc
        path.unlink()
        return out

    def upload_error_file(self, local: Path, name: str, key: str, resumed: bool = False) -> str:
        """Upload under ``.dataflow-<key>.tmp``, then rename to `name` (never overwriting).

        `resumed`: `name` was chosen by an interrupted attempt at this same file; if it exists,
        that attempt's rename completed (renames are atomic), so it is not uploaded again.
        """
        directory = self.config.error_directory
        self._ensure_dir(directory)
        final = posixpath.join(directory, name)
        if resumed and self._exists(final):
            return final
        temp = posixpath.join(directory, f"{TEMP_PREFIX}{key}.tmp")
        try:
            with local.open("rb") as fh:
                self.sftp.putfo(fh, temp, confirm=True)
        except (OSError, paramiko.SSHException) as exc:
            self._remove_quietly(temp)
            raise self._io("upload of", temp, exc) from exc
        crash_point("error_temp")
        return self._rename_unique(temp, final)

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

    def _rename_unique(self, src: str, dst: str) -> str:
        """Rename without ever overwriting: a taken name gets a timestamp suffix."""
        candidates = [dst, f"{dst}.{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"]
        candidates += [f"{candidates[1]}-{i}" for i in range(1, 50)]
        for candidate in candidates:
            if self._exists(candidate):
                continue
            try:
                self.sftp.rename(src, candidate)  # SFTPv3 rename refuses to overwrite
                return candidate
            except OSError as exc:
                if self._exists(candidate):
                    continue  # lost a race for the name
                raise self._io(f"rename to {candidate} of", src, exc) from exc
        raise FatalError(f"no free name for {dst} on {self.where}")

    def _exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._io("stat of", path, exc) from exc
        return True

    def _ensure_dir(self, directory: str) -> None:
        if self._exists(directory):
            return
        parent = posixpath.dirname(directory)
        if parent and parent != directory:
            self._ensure_dir(parent)
        try:
            self.sftp.mkdir(directory)
        except OSError as exc:
            if not self._exists(directory):
                raise self._io("mkdir", directory, exc) from exc

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(OSError, paramiko.SSHException):
            self.sftp.remove(path)
