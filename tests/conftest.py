"""Fixtures over real parts: an OpenSSH sshd, real gpg keys, the API emulator over TCP."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataflow.sandbox import SFTP_DIRS, Emulator, PgpKeys, SftpServer

# the sample files' event date, and the bulk templates' mapping, shared by the suites
EVENT_DATE = {"column": "event_date", "date_format": "%d/%m/%Y %H:%M", "timezone": "Asia/Kolkata"}


def bulk_mapping(
    owner: Any = "owner_type", reference: Any = "reference_id", date_field: str = "earnEventDate"
) -> dict[str, Any]:
    """A bulk template's `transform:` settings; ownerType/referenceId from columns by default
    (pass ``{"const": ...}`` for a constant)."""
    return {
        "mapping": {
            "badgeMetaId": "badge_id",
            "customerId": "customer_id",
            date_field: EVENT_DATE,
            "ownerType": owner,
            "referenceId": reference,
        }
    }


CLIENT_KEY = "acme-key"
CLIENT_SECRET = "client-secret-" + secrets.token_hex(8)
BASIC_USER = "acme-basic"
BASIC_PASSWORD = "basic-pass-" + secrets.token_hex(8)
PGP_PASSPHRASE = "pgp-pass-" + secrets.token_hex(8)
METAS = ["BADGE-GOLD", "BADGE-SILVER"]


@pytest.fixture(scope="session")
def sftp_server() -> Any:
    server = SftpServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def sftp(sftp_server: SftpServer) -> SftpServer:
    for directory in SFTP_DIRS:
        for path in (sftp_server.root / directory).iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    (sftp_server.dir / "keys" / sftp_server.user).unlink(missing_ok=True)
    return sftp_server


@pytest.fixture(scope="session")
def emulator_server() -> Any:
    api = Emulator(
        clients={CLIENT_KEY: CLIENT_SECRET}, basic={BASIC_USER: BASIC_PASSWORD}, badge_metas=METAS
    ).start()
    yield api
    api.stop()


@pytest.fixture
def api(emulator_server: Emulator) -> Emulator:
    emulator_server.reset()
    emulator_server.configure(token_ttl=3600, retry_after=1, expire_tokens=True)
    return emulator_server


@pytest.fixture(scope="session")
def pgp_keys(tmp_path_factory: pytest.TempPathFactory) -> PgpKeys:
    return PgpKeys(tmp_path_factory.mktemp("pgp"), PGP_PASSPHRASE).generate()


@pytest.fixture(scope="session")
def other_pgp_keys(tmp_path_factory: pytest.TempPathFactory) -> PgpKeys:
    return PgpKeys(tmp_path_factory.mktemp("pgp-other"), "other-" + PGP_PASSPHRASE).generate()


SECRETS = {
    "T_SFTP_PASSWORD": None,  # filled from the server
    "T_PGP_PASSPHRASE": PGP_PASSPHRASE,
    "T_CLIENT_KEY": CLIENT_KEY,
    "T_CLIENT_SECRET": CLIENT_SECRET,
    "T_BASIC_PASSWORD": BASIC_PASSWORD,
}


@dataclass
class Bed:
    """A dataflow file wired to the real parts, and a way to run the CLI on it."""

    dir: Path
    sftp: SftpServer
    api: Emulator
    keys: PgpKeys

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in SECRETS.items() if v is not None}
        env["T_SFTP_PASSWORD"] = self.sftp.password
        env["DATAFLOW_STATE_DIR"] = str(self.dir / "state")
        return env

    def secret_values(self) -> list[str]:
        values = list(self.env.values())
        values.remove(self.env["DATAFLOW_STATE_DIR"])
        return [*values, self.keys.private_key.read_text().splitlines()[3]]

    def config(
        self,
        *,
        name: str = "acme-earned-badges",
        source: dict[str, Any] | None = None,
        decrypt: dict[str, Any] | None = None,
        transform: dict[str, Any] | None = None,
        sink: dict[str, Any] | None = None,
        file: str = "flow.yaml",
        template: str = "earned_badges",
    ) -> Path:
        path = self.dir / file
        shutil.copy(self.keys.private_key, path.parent / "private.asc")
        blocks = [
            {
                "name": "connect_to_source",
                "type": "sftp_read",
                "hostname": "127.0.0.1",
                "port": self.sftp.port,
                "username": self.sftp.user,
                "password": "${T_SFTP_PASSWORD}",
                "known_hosts": str(self.sftp.known_hosts),
                "source_directory": "/inbox",
                "filename_pattern": r"badges_.*\.csv(\.gpg)?",
                "processed_directory": "/processed",
                "error_directory": "/errors",
                **(source or {}),
            },
            {
                "name": "decrypt",
                "type": "pgp_decrypt",
                "private_key": "${file:private.asc}",
                "passphrase": "${T_PGP_PASSPHRASE}",
                **(decrypt or {}),
            },
            {
                "name": "transform",
                "type": "field_mapping",
                "mapping": {
                    "badgeMetaId": "badge_id",
                    "customerId": "customer_id",
                    "earnEventDate": EVENT_DATE,
                    "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
                },
                **(transform or {}),
            },
            {
                "name": "connect_to_destination",
                "type": "http_write",
                "base_url": self.api.url,
                "auth": {
                    "type": "oauth",
                    "client_key": "${T_CLIENT_KEY}",
                    "client_secret": "${T_CLIENT_SECRET}",
                },
                "batch_size": 3,
                "concurrency": 2,
                **(sink or {}),
            },
            {
                "name": "trigger",
                "type": "schedule",
                "cron": "0 6 * * MON",
                "timezone": "Asia/Kolkata",
            },
        ]
        doc = {"version": 1, "name": name, "template": template, "blocks": blocks}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dataflow", *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """The CLI in the background (for kills and signals)."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(
            [sys.executable, "-m", "dataflow", *args],
            env={**os.environ, **self.env},
            text=True,
            **kwargs,
        )

    def run_json(self, config: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
        result = self.run("run", str(config), "--json", *extra)
        report = json.loads(result.stdout) if result.stdout.strip() else {}
        return result.returncode, report, result.stderr


COUNTS = ("rows_total", "rows_rejected", "rows_sent", "rows_succeeded", "rows_failed")


def counts(file_report: dict[str, Any]) -> tuple[int, ...]:
    """(total, rejected, sent, succeeded, failed) of a file in a run report."""
    return tuple(file_report[k] for k in COUNTS)


@contextlib.contextmanager
def opened(block: Any) -> Iterator[Any]:
    """A block opened for the duration of a `with`, closed whatever happens."""
    block.open()
    try:
        yield block
    finally:
        block.close()


def wait_until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def bed(tmp_path: Path, sftp: SftpServer, api: Emulator, pgp_keys: PgpKeys) -> Bed:
    return Bed(tmp_path, sftp, api, pgp_keys)
