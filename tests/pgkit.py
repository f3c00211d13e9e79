"""A throwaway PostgreSQL 15 for the tests: Debian's initdb in a temp dir, on 127.0.0.1.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user (made
by Debian's package; created here if missing) and its commands run through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from dataflow import db
from dataflow.ledger import Ledger
from dataflow.sandbox import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
OWNER = "postgres"


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *args] if os.geteuid() == 0 else args


class Postgres:
    """One PostgreSQL server; `database()` gives each test its own fresh database."""

    def __init__(self, listen: str | None = None, clients: str | None = None) -> None:
        """`listen`: an address to listen on besides 127.0.0.1, open to the `clients` CIDR
        (tests/clusterkit.py: hosts in other network namespaces)."""
        self.listen, self.clients = listen, clients
        self.dir = Path(tempfile.mkdtemp(prefix="dataflow-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "dataflow"
        self.password = "pg-" + secrets.token_hex(8)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(OWNER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", OWNER], check=True)
            shutil.chown(self.dir, OWNER, OWNER)
        secret = self.dir / "pwfile"
        secret.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(secret, OWNER, OWNER)
        initdb = [str(BIN / "initdb"), "-D", str(self.data), "-U", self.user, "-E", "UTF8"]
        initdb += ["--auth=scram-sha-256", f"--pwfile={secret}", "--no-sync", "--no-instructions"]
        subprocess.run(_as_owner(initdb), check=True, capture_output=True)
        secret.unlink()
        if self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.clients} scram-sha-256\n")
        addresses = ",".join(["127.0.0.1", *([self.listen] if self.listen else [])])
        options = (
            f"-p {self.port} -c listen_addresses={addresses} -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        start = [str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options]
        start += ["-l", str(self.dir / "log"), "-w", "-t", "60", "start"]
        subprocess.run(_as_owner(start), check=True, capture_output=True)
        return self

    def dsn(self, database: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} "
            f"dbname={database}"
        )

    def url(self, database: str, host: str = "127.0.0.1") -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@{host}:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(
                _as_owner([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                check=True,
                capture_output=True,
            )
        shutil.rmtree(self.dir, ignore_errors=True)


# fixtures: import them into a test module that uses them
Open = Callable[[], Ledger]  # opens a ledger on the backend of the test


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    url = postgres.database()
    db.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Open:
    if request.param == "sqlite":
        return lambda: Ledger(tmp_path)
    url = request.getfixturevalue("pg_url")
    return lambda: Ledger(url=url)
