"""An embedded sandbox of real parts: OpenSSH sftp server, the API emulator, PGP keys.

Used by ``dataflow-sandbox demo`` (README) and by the test suite's fixtures. Everything runs
on 127.0.0.1 (or a given ``host``) on free ports. The SFTP server is a real ``sshd`` with a
throwaway host key and a chrooted user with password and key auth; creating that user needs
root (as on CI and in the dev container).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SFTP_USER = "dfsftp"
SSHD = "/usr/sbin/sshd"
SFTP_DIRS = ("inbox", "processed", "errors")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    timeout: float = 15.0,
    proc: subprocess.Popen[Any] | None = None,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _terminate(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


class SftpServer:
    """A real OpenSSH sshd serving SFTP to one chrooted user, on `host` (127.0.0.1 unless
    told: tests/clusterkit.py serves hosts in other network namespaces)."""

    def __init__(self, base: Path | None = None, host: str = "127.0.0.1") -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the SFTP sandbox creates a system user and a chroot: run as root")
        if not Path(SSHD).exists():
            raise RuntimeError("OpenSSH server missing: apt-get install openssh-server")
        self.dir = Path(tempfile.mkdtemp(prefix="sftp-", dir=_root_owned_base(base)))
        self.dir.chmod(0o755)
        self.root = self.dir / "root"  # the chroot: root-owned, 755
        self.host = host
        self.port = free_port(host)
        self.user = f"{SFTP_USER}{self.port}"  # one user per server: parallel runs coexist
        self.password = secrets.token_urlsafe(12)
        self.known_hosts = self.dir / "known_hosts"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SftpServer:
        _ensure_user(self.user, self.password)
        uid = pwd.getpwnam(self.user).pw_uid
        self.root.mkdir(mode=0o755)
        for name in SFTP_DIRS:
            path = self.root / name
            path.mkdir()
            os.chown(path, uid, uid)
        (self.dir / "keys").mkdir()
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True
        )
        public = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {public[0]} {public[1]}\n")
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.host}\nHostKey {self.host_key}\n"
            f"PidFile {self.dir}/sshd.pid\nAuthorizedKeysFile {self.dir}/keys/%u\n"
            "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nSubsystem sftp internal-sftp\n"
            f"AllowUsers {self.user}\nMaxStartups 50\nMaxSessions 50\n"
            f"Match User {self.user}\n  ChrootDirectory {self.root}\n"
            "  ForceCommand internal-sftp\n  AllowTcpForwarding no\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc, host=self.host)
        return self

    def authorize_key(self, public_key_line: str) -> None:
        (self.dir / "keys" / self.user).write_text(public_key_line.strip() + "\n")

    def put(self, relative: str, data: bytes, age_seconds: int = 120) -> Path:
        """Place a file on the server (as the vendor would), modified `age_seconds` ago."""
        path = self.root / relative.lstrip("/")
        path.write_bytes(data)
        uid = pwd.getpwnam(self.user).pw_uid
        os.chown(path, uid, uid)
        stamp = time.time() - age_seconds
        os.utime(path, (stamp, stamp))
        return path

    def files(self, directory: str) -> list[str]:
        return sorted(p.name for p in (self.root / directory.lstrip("/")).iterdir())

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        subprocess.run(["userdel", self.user], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _root_owned_base(base: Path | None) -> Path:
    """sshd refuses a chroot below a group/world-writable directory (such as /tmp)."""
    path = base or Path("/srv/dataflow-sandbox")
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def _ensure_user(user: str, password: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--no-create-home",
                "--home-dir",
                "/",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ],
            check=True,
        )
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n".encode(), check=True)


class Emulator:
    """The Capillary API emulator in a subprocess, over real TCP, on `host`."""

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        basic: dict[str, str] | None = None,
        badge_metas: list[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.args = [sys.executable, "-m", "dataflow.emulator", "--port", str(self.port)]
        self.args += ["--host", host]
        for key, secret in (clients or {}).items():
            self.args += ["--client", f"{key}:{secret}"]
        for user, password in (basic or {}).items():
            self.args += ["--basic", f"{user}:{password}"]
        for meta in badge_metas or []:
            self.args += ["--badge-meta", meta]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Emulator:
        self.proc = subprocess.Popen(self.args)
        wait_for_port(self.port, proc=self.proc, host=self.host)
        return self

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.url + path, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def received(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/__emulator/received")["records"])

    def earned(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/__emulator/received")["earned"])

    def issued(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/__emulator/received")["issued"])

    def token_requests(self) -> int:
        return int(self._call("GET", "/__emulator/received")["token_requests"])

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/__emulator/requests"))

    def configure(self, **settings: Any) -> None:
        self._call("POST", "/__emulator/config", settings)

    def reset(self) -> None:
        self._call("POST", "/__emulator/reset")

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


class PgpKeys:
    """A throwaway PGP key pair made with the real gpg, and encryption to it."""

    def __init__(self, directory: Path, passphrase: str) -> None:
        self.passphrase = passphrase
        self.private_key = directory / "private.asc"
        self.public_key = directory / "public.asc"
        self.uid = "Dataflow Sandbox <sandbox@dataflow.invalid>"

    def generate(self) -> PgpKeys:
        with _gpg_home() as home:
            _gpg(
                home,
                "--passphrase",
                self.passphrase,
                "--quick-generate-key",
                self.uid,
                "future-default",
                "default",
                "never",
            )
            self.public_key.write_bytes(_gpg(home, "--armor", "--export", self.uid))
            self.private_key.write_bytes(
                _gpg(
                    home,
                    "--passphrase",
                    self.passphrase,
                    "--armor",
                    "--export-secret-keys",
                    self.uid,
                )
            )
        return self

    def encrypt(self, data: bytes) -> bytes:
        with _gpg_home() as home:
            _gpg(home, "--import", str(self.public_key))
            return _gpg(
                home, "--trust-model", "always", "--encrypt", "--recipient", self.uid, input=data
            )


@contextlib.contextmanager
def _gpg_home() -> Any:
    home = tempfile.mkdtemp(prefix="g", dir="/tmp")
    try:
        yield home
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False, capture_output=True
        )
        shutil.rmtree(home, ignore_errors=True)


def _gpg(home: str, *args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", *args],
        input=input,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gpg {args[0]} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


SAMPLE_HEADER = "badge_id,customer_id,event_date,expires_at"
SAMPLE_ROWS = [
    "BADGE-GOLD,1001,16/11/2026 09:30,1798761600",
    "BADGE-GOLD,1002,16/11/2026 10:00,1798761600",
    "BADGE-SILVER,1003,17/11/2026 11:15,1798761600",
    "BADGE-GOLD,,17/11/2026 12:00,1798761600",  # customerId empty
    "BADGE-SILVER,1005,2026-11-17,1798761600",  # wrong date format
    "BADGE-GOLD,abc,18/11/2026 08:00,1798761600",  # customerId not a number
    "BADGE-SILVER,1007,18/11/2026 09:00,1700000000",  # expires before the event
    "BADGE-UNKNOWN,1008,18/11/2026 10:00,1798761600",  # API: unknown badge meta
    "BADGE-GOLD,1009,19/11/2026 07:45,1798761600,extra",  # malformed: 5 fields
    "BADGE-SILVER,1010,19/11/2026 08:00,1798761600",
]


def sample_csv() -> bytes:
    return ("\n".join([SAMPLE_HEADER, *SAMPLE_ROWS]) + "\n").encode()


DEMO_YAML = """\
version: 1
name: acme-earned-badges
template: earned_badges
enabled: true

blocks:
  - name: connect_to_source
    type: sftp_read
    hostname: 127.0.0.1
    port: {sftp_port}
    username: {sftp_user}
    password: ${{SANDBOX_SFTP_PASSWORD}}
    known_hosts: {known_hosts}
    source_directory: /inbox
    filename_pattern: 'badges_.*\\.csv\\.gpg'
    processed_directory: /processed
    error_directory: /errors
    min_file_age_seconds: 30

  - name: decrypt
    type: pgp_decrypt
    private_key: ${{file:private.asc}}
    passphrase: ${{SANDBOX_PGP_PASSPHRASE}}

  - name: transform
    type: field_mapping
    mapping:
      badgeMetaId: badge_id
      customerId: customer_id
      earnEventDate: {{column: event_date, date_format: "%d/%m/%Y %H:%M", timezone: Asia/Kolkata}}
      earnExpiresOn: {{column: expires_at, date_format: epoch}}

  - name: connect_to_destination
    type: http_write
    base_url: {api_url}
    auth:
      type: oauth
      client_key: ${{SANDBOX_CLIENT_KEY}}
      client_secret: ${{SANDBOX_CLIENT_SECRET}}
    batch_size: 100
    concurrency: 4

  - name: trigger
    type: schedule
    cron: "0 6 * * MON"
    timezone: Asia/Kolkata
"""


def demo(workdir: Path) -> int:
    """Set up the sandbox, run the main dataflow once, print where everything landed."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "SANDBOX_SFTP_PASSWORD": "",
        "SANDBOX_PGP_PASSPHRASE": secrets.token_urlsafe(12),
        "SANDBOX_CLIENT_KEY": "acme-key",
        "SANDBOX_CLIENT_SECRET": secrets.token_urlsafe(16),
    }
    print(
        "starting the sandbox: OpenSSH sftp server, Capillary API emulator, PGP keys",
        file=sys.stderr,
    )
    sftp = SftpServer().start()
    env["SANDBOX_SFTP_PASSWORD"] = sftp.password
    api = Emulator(
        clients={env["SANDBOX_CLIENT_KEY"]: env["SANDBOX_CLIENT_SECRET"]},
        badge_metas=["BADGE-GOLD", "BADGE-SILVER"],
    ).start()
    try:
        keys = PgpKeys(workdir, env["SANDBOX_PGP_PASSPHRASE"]).generate()
        name = "badges_2026-11-16.csv.gpg"
        sftp.put(f"inbox/{name}", keys.encrypt(sample_csv()))
        config = workdir / "acme-earned-badges.yaml"
        config.write_text(
            DEMO_YAML.format(
                sftp_port=sftp.port,
                sftp_user=sftp.user,
                known_hosts=sftp.known_hosts,
                api_url=api.url,
            )
        )
        print(
            f"vendor file /inbox/{name}: {len(SAMPLE_ROWS)} rows, PGP-encrypted\n"
            f"dataflow file: {config}\n",
            file=sys.stderr,
        )
        state = workdir / "state"
        result = subprocess.run(
            [sys.executable, "-m", "dataflow", "run", str(config)],
            env={**os.environ, **env, "DATAFLOW_STATE_DIR": str(state)},
            check=False,
        )
        print("\non the SFTP server now:", file=sys.stderr)
        for directory in SFTP_DIRS:
            print(
                f"  /{directory}: {', '.join(sftp.files(directory)) or '(empty)'}", file=sys.stderr
            )
        for error_file in sorted((sftp.root / "errors").glob("result_*")):
            print(f"\n/errors/{error_file.name}:\n{error_file.read_text()}", file=sys.stderr)
        print(f"the API emulator accepted {len(api.received())} badge(s)", file=sys.stderr)
        print(
            f"dataflow run exited with {result.returncode} (3 = partial: some rows were "
            "rejected, as the sample intends)",
            file=sys.stderr,
        )
        return 0 if result.returncode in (0, 3) else result.returncode
    finally:
        api.stop()
        sftp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflow.sandbox")
    parser.add_argument("command", choices=["demo"])
    parser.add_argument("--workdir", type=Path, default=Path("sandbox"))
    args = parser.parse_args(argv)
    return demo(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
