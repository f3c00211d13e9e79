"""Where the state lives: SQLite in the state directory (the default) or PostgreSQL.

``DATAFLOW_STATE_URL`` (``postgresql+psycopg://user:password@host:5432/db``) puts the ledger,
the checkpoints, the locks and the file leases in PostgreSQL, for several machines; unset, they
stay in ``$DATAFLOW_STATE_DIR/ledger.db`` as on one machine. Both go through one SQLAlchemy
engine and one connection per `Ledger`, on which the ledger sends its statements as written
for SQLite (``?`` parameters); `Store` renders them for psycopg.

On PostgreSQL the schema is `METADATA` (SQLAlchemy Core), created or migrated by ``dataflow
db upgrade`` (`upgrade`) and recorded in ``schema_version``; a ledger refuses a database whose
schema is missing or older. Every connection sets TCP keepalives on both sides (2 s idle, 1 s
between 2 probes) and ``client_connection_check_interval`` so that the locks of a host that
vanished are freed in seconds, not after the kernel's two hours.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dataflow.errors import StateError

if TYPE_CHECKING:  # SQLAlchemy is imported for PostgreSQL only: a run on SQLite goes without
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

SCHEMA_VERSION = 4  # the PostgreSQL schema `upgrade` creates; bump with each migration
# keepalives on the client (libpq) and on the server (its side of the same connection)
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 2,
}
SERVER_SETTINGS = (
    "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 "
    "-c client_connection_check_interval=1000"
)
CONNECT_TIMEOUT = 10  # seconds to reach PostgreSQL before the ledger gives up

COUNTS = ("total", "filtered", "rejected", "sent", "succeeded", "failed")  # a file's rows_*
# the leases of files being worked on (dataflow.lease); in both backends
LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    dataflow TEXT NOT NULL,
    name TEXT NOT NULL,  -- the file's name in the source directory
    owner TEXT NOT NULL,
    fence BIGINT NOT NULL,  -- +1 at each claim; a write carrying an older one changes nothing
    lease_until DOUBLE PRECISION NOT NULL,  -- epoch seconds, the database's clock
    PRIMARY KEY (dataflow, name)
);
"""
# big files split into shards sent by several workers (dataflow.shards); in both backends
SHARD_SCHEMA = """
CREATE TABLE IF NOT EXISTS shard_sets (
    dataflow TEXT NOT NULL,
    send_key TEXT NOT NULL,  -- the send's checkpoint key (dataflow.checkpoint.send_key)
    name TEXT NOT NULL, path TEXT NOT NULL, size BIGINT, mtime BIGINT, ok_path TEXT,
    sha256 TEXT NOT NULL, send_no BIGINT NOT NULL,
    run_id TEXT NOT NULL, lineage_id TEXT NOT NULL,  -- the run that split it, the file's
    config_path TEXT NOT NULL,
    shards BIGINT NOT NULL,
    state TEXT NOT NULL,  -- running, finished
    processed_path TEXT,  -- where the last shard moved the original
    chunk_bytes BIGINT,  -- the parse chunk the ranges were planned with (NULL: before schema 3)
    parse TEXT,  -- JSON: every parse setting the chunks depend on, as planned (chunk_bytes, ...)
    PRIMARY KEY (dataflow, send_key)
);
CREATE TABLE IF NOT EXISTS shards (
    dataflow TEXT NOT NULL,
    send_key TEXT NOT NULL,
    shard_no BIGINT NOT NULL,
    chunk_from BIGINT NOT NULL,  -- the parser's chunks [chunk_from, chunk_to)
    chunk_to BIGINT,  -- NULL: to the end of the file
    state TEXT NOT NULL,  -- pending, done
    rows_total BIGINT, rows_filtered BIGINT, rows_rejected BIGINT,
    rows_sent BIGINT, rows_succeeded BIGINT, rows_failed BIGINT,
    error_rows BIGINT,
    errors BLOB,  -- the shard's error file (CSV, with its header)
    summary TEXT,  -- JSON [[stage, code, message, count]]
    failed TEXT,  -- JSON [[line, code, message]]: rows the API failed (dataflow retry)
    owner TEXT,  -- the worker that sent it
    stops BIGINT,  -- deliveries that stopped on an error (NULL: none; schema 4)
    stopped TEXT,  -- the last such error, as the worker logged it
    PRIMARY KEY (dataflow, send_key, shard_no)
);
CREATE TABLE IF NOT EXISTS shard_errors (  -- a done shard's error file, in parts (streamed)
    dataflow TEXT NOT NULL,
    send_key TEXT NOT NULL,
    shard_no BIGINT NOT NULL,
    part_no BIGINT NOT NULL,  -- 0: the header; 1, 2, ...: the rows, at most PART_BYTES each
    data BLOB NOT NULL,
    PRIMARY KEY (dataflow, send_key, shard_no, part_no)
);
"""


def __getattr__(name: str) -> Any:
    if name == "METADATA":  # built on first use: the PostgreSQL schema (SQLAlchemy Core)
        return metadata()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def metadata() -> sa.MetaData:
    """The PostgreSQL schema (SQLAlchemy Core): what `upgrade` creates."""
    import sqlalchemy as sa

    METADATA = sa.MetaData()

    def _text(name: str, *, nullable: bool = True, primary: bool = False) -> sa.Column[Any]:
        return sa.Column(name, sa.Text, nullable=nullable and not primary, primary_key=primary)

    def _int(
        name: str, *, nullable: bool = True, primary: bool = False, default: int | None = None
    ) -> sa.Column[Any]:
        if default is not None:
            return sa.Column(
                name, sa.BigInteger, nullable=False, server_default=sa.text(str(default))
            )
        return sa.Column(
            name, sa.BigInteger, nullable=nullable and not primary, primary_key=primary
        )

    def _keys(*names: str) -> list[sa.Column[Any]]:
        """The text columns of a table's primary key, in order."""
        return [_text(name, primary=True) for name in names]

    def _counts() -> list[sa.Column[Any]]:
        """A file's (or a shard's) row counts, ``rows_total`` ... ``rows_failed``."""
        return [_int(f"rows_{name}") for name in COUNTS]

    def _seq() -> sa.Column[Any]:
        """The insertion order (SQLite's rowid): the ledger orders runs and files by it."""
        return sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True)

    sa.Table(
        "runs",
        METADATA,
        _text("run_id", primary=True),
        _text("dataflow", nullable=False),
        _text("started_at", nullable=False),
        _text("finished_at"),
        _text("status"),
        _int("dry_run", default=0),
        _text("reason"),
        _seq(),
    )
    sa.Table(
        "files",
        METADATA,
        sa.Column("run_id", sa.Text, sa.ForeignKey("runs.run_id"), primary_key=True),
        _text("dataflow", nullable=False),
        _text("name", nullable=False),
        _int("size"),
        _text("sha256"),
        _text("lineage_id", primary=True),
        _text("status", nullable=False),
        *_counts(),
        _text("processed_path"),
        _text("error_file"),
        _text("reason"),
        _int("send_no", default=0),
        _text("retry_of"),
        _seq(),
        sa.Index("files_by_content", "dataflow", "sha256", "status"),
    )
    sa.Table("fires", METADATA, *_keys("dataflow", "local_minute"))
    sa.Table(
        "error_summary",
        METADATA,
        *_keys("run_id", "lineage_id", "stage", "code", "message"),
        _int("count", nullable=False),
    )
    sa.Table(
        "line_failures",
        METADATA,
        *_keys("dataflow", "lineage_id", "code", "message"),
        sa.Column("lines", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "counters",
        METADATA,
        *_keys("name", "dataflow", "label"),
        _int("value", nullable=False),
    )
    sa.Table(
        "progress",
        METADATA,
        *_keys("dataflow", "sha256"),
        _text("name", nullable=False),
        _text("lineage_id", nullable=False),
        _text("error_name"),
        _text("error_path"),
        _text("content"),
        _int("send_no", default=0),
        _text("retry_of"),
        _text("error_digests"),
    )
    sa.Table(
        "acks",
        METADATA,
        _text("dataflow", nullable=False),
        _text("sha256", nullable=False),
        sa.Column("lines", sa.LargeBinary, nullable=False),
        _text("failures"),
        _text("ids"),
        sa.Index("acks_by_file", "dataflow", "sha256"),
    )
    sa.Table(
        "schema_version",
        METADATA,
        sa.Column("version", sa.Integer, nullable=False),
    )

    sa.Table(
        "leases",
        METADATA,
        *_keys("dataflow", "name"),
        _text("owner", nullable=False),
        _int("fence", nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
    )

    sa.Table(
        "shard_sets",
        METADATA,
        *_keys("dataflow", "send_key"),
        _text("name", nullable=False),
        _text("path", nullable=False),
        _int("size"),
        _int("mtime"),
        _text("ok_path"),
        _text("sha256", nullable=False),
        _int("send_no", nullable=False),
        _text("run_id", nullable=False),
        _text("lineage_id", nullable=False),
        _text("config_path", nullable=False),
        _int("shards", nullable=False),
        _text("state", nullable=False),
        _text("processed_path"),
        _int("chunk_bytes"),
        _text("parse"),
    )
    sa.Table(
        "shards",
        METADATA,
        *_keys("dataflow", "send_key"),
        _int("shard_no", primary=True),
        _int("chunk_from", nullable=False),
        _int("chunk_to"),
        _text("state", nullable=False),
        *_counts(),
        _int("error_rows"),
        sa.Column("errors", sa.LargeBinary),
        _text("summary"),
        _text("failed"),
        _text("owner"),
        _int("stops"),
        _text("stopped"),
    )
    sa.Table(
        "shard_errors",
        METADATA,
        *_keys("dataflow", "send_key"),
        _int("shard_no", primary=True),
        _int("part_no", primary=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    return METADATA


# columns added to existing tables, by schema version (create_all adds only missing tables)
ADDED_COLUMNS = (
    (3, "shard_sets", "chunk_bytes", "BIGINT"),
    (3, "shard_sets", "parse", "TEXT"),
    (4, "progress", "error_digests", "TEXT"),
    (4, "acks", "ids", "TEXT"),
    (4, "shards", "stops", "BIGINT"),
    (4, "shards", "stopped", "TEXT"),
)


def state_url() -> str | None:
    """The PostgreSQL URL of the state (`DATAFLOW_STATE_URL`), None for SQLite."""
    return os.environ.get("DATAFLOW_STATE_URL") or None


def shown(url: str) -> str:
    """The URL as it may be printed: without its password."""
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "DATAFLOW_STATE_URL (not a valid URL)"


def database_error(url: str, exc: BaseException) -> StateError:
    """Say that the PostgreSQL state cannot be used, where, why and what to do."""
    import sqlalchemy as sa

    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = reason[0] if reason else type(exc).__name__
    password = sa.make_url(url).password if "://" in url else None
    if password:
        text = text.replace(str(password), "***")
    return StateError(
        f"the state database {shown(url)} (DATAFLOW_STATE_URL) cannot be used: {text}. Check "
        "that PostgreSQL is running and reachable and that `dataflow db upgrade` was run on it"
    )


def postgres_engine(url: str) -> Engine:
    """An engine on PostgreSQL with keepalives set, so a lost holder's locks go in seconds."""
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.pool import NullPool

    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError as exc:
        raise StateError(
            "DATAFLOW_STATE_URL is not a valid URL: give postgresql+psycopg://user:password@"
            "host:5432/database"
        ) from exc
    if parsed.get_backend_name() != "postgresql":
        raise StateError(
            f"DATAFLOW_STATE_URL {shown(url)} is not a PostgreSQL URL: give "
            "postgresql+psycopg://user:password@host:5432/database (unset it for SQLite)"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    args: dict[str, Any] = {**KEEPALIVES, "connect_timeout": CONNECT_TIMEOUT}
    if "options" not in parsed.query:
        args["options"] = SERVER_SETTINGS
    try:
        return sa.create_engine(
            parsed, poolclass=NullPool, connect_args=args, isolation_level="AUTOCOMMIT"
        )
    except (sa_exc.SQLAlchemyError, ImportError) as exc:
        raise database_error(url, exc) from exc


@dataclass
class Cursor:
    """What a statement returned: rows, their column names and how many rows it changed."""

    rows: list[tuple[Any, ...]]
    description: list[tuple[str]]
    rowcount: int

    def fetchone(self) -> Any:  # a row, or None (as sqlite3 types it)
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class Store:
    """One connection to the state, in autocommit; `execute` takes SQLite's ``?`` statements
    and turns every database failure into the StateError that `on_error` makes.

    On SQLite it is the sqlite3 connection itself (`open_sqlite`: no SQLAlchemy, neither its
    import, about 0.15 s at each start, nor its cost per statement, paid at each checkpoint);
    on PostgreSQL a SQLAlchemy connection (psycopg)."""

    def __init__(self, engine: Engine, on_error: Callable[[BaseException], StateError]) -> None:
        from sqlalchemy import exc as sa_exc

        self.engine: Engine | None = engine
        self.dialect = engine.dialect.name
        self.postgres = self.dialect == "postgresql"
        self.on_error = on_error
        self._sqlite: sqlite3.Connection | None = None
        self._errors: type[Exception] = sa_exc.SQLAlchemyError  # what a failure raises
        try:
            self.connection: Connection = engine.connect()
        except sa_exc.SQLAlchemyError as exc:
            raise on_error(exc) from exc

    @classmethod
    def open_sqlite(
        cls,
        connect: Callable[[], sqlite3.Connection],
        on_error: Callable[[BaseException], StateError],
    ) -> Store:
        """A store on the sqlite3 connection `connect` makes (in autocommit:
        ``isolation_level=None``; transactions are explicit)."""
        store = cls.__new__(cls)
        store.engine = None
        store.dialect = "sqlite"
        store.postgres = False
        store.on_error = on_error
        store._errors = sqlite3.Error
        try:
            store._sqlite = connect()
        except sqlite3.Error as exc:
            raise on_error(exc) from exc
        return store

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        if self._sqlite is not None:
            try:
                cursor = self._sqlite.execute(sql, tuple(parameters))
                if cursor.description is None:
                    return Cursor([], [], cursor.rowcount)
                rows = cursor.fetchall()
                return Cursor(rows, [(d[0],) for d in cursor.description], cursor.rowcount)
            except sqlite3.Error as exc:
                raise self.on_error(exc) from exc
        sql = sql.replace("%", "%%").replace("?", "%s")
        try:
            result = self.connection.exec_driver_sql(sql, tuple(parameters))
            if result.returns_rows:
                keys = result.keys()
                names = [(str(name),) for name in keys]
                return Cursor([tuple(row) for row in result.fetchall()], names, result.rowcount)
            return Cursor([], [], result.rowcount)
        except self._errors as exc:
            raise self.on_error(exc) from exc

    def stream(
        self, sql: str, parameters: Sequence[Any] = (), /, size: int = 100
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of a query, `size` at a time, never all in memory (`execute` fetches
        them all). On PostgreSQL a server-side cursor, in a transaction of its own: not for
        use inside another transaction."""
        if self._sqlite is not None:
            try:
                cursor = self._sqlite.execute(sql, tuple(parameters))
                while rows := cursor.fetchmany(size):
                    yield from rows
            except sqlite3.Error as exc:
                raise self.on_error(exc) from exc
            return
        if not self._idle():  # inside the caller's transaction: its BEGIN/COMMIT are not ours
            yield from self.execute(sql, parameters).fetchall()
            return
        name = f"dataflow_rows_{uuid.uuid4().hex}"
        self.begin()
        done = False
        try:
            self.execute(f"DECLARE {name} NO SCROLL CURSOR FOR {sql}", parameters)
            while rows := self.execute(f"FETCH {int(size)} FROM {name}").fetchall():
                yield from rows
            done = True
        finally:
            self.execute("COMMIT" if done else "ROLLBACK")

    def _idle(self) -> bool:
        """True when the PostgreSQL connection is in no transaction."""
        import psycopg

        raw = self.connection.connection.dbapi_connection
        status = getattr(getattr(raw, "info", None), "transaction_status", None)
        return bool(status == psycopg.pq.TransactionStatus.IDLE)

    def script(self, sql: str) -> None:
        """A SQLite script (the schema of ``ledger.db``)."""
        assert self._sqlite is not None, "a script runs on SQLite only"
        try:
            self._sqlite.executescript(sql)
        except sqlite3.Error as exc:
            raise self.on_error(exc) from exc

    def begin(self) -> None:
        self.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")

    def close(self) -> None:
        try:
            (self._sqlite or self.connection).close()
        except self._errors as exc:
            raise self.on_error(exc) from exc
        finally:
            if self.engine is not None:
                self.engine.dispose()


def schema_version(store: Store) -> int:
    """The schema version of a PostgreSQL state (0: none yet)."""
    row = store.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'schema_version' "
        "AND table_schema = current_schema()"
    ).fetchone()
    if row is None:
        return 0
    version = store.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(version[0] or 0) if version else 0


UPGRADE_LOCK = 0x64617461666C6F77  # 'dataflow': one `db upgrade` at a time


def upgrade(url: str) -> tuple[int, int]:
    """Create or migrate the PostgreSQL schema; (version before, version now). Idempotent,
    and safe to run from several hosts at once (an advisory transaction lock)."""
    from sqlalchemy import exc as sa_exc

    store = Store(postgres_engine(url), lambda exc: database_error(url, exc))
    try:
        store.begin()
        try:
            store.execute("SELECT pg_advisory_xact_lock(?)", (UPGRADE_LOCK,))
            before = schema_version(store)
            if before < SCHEMA_VERSION:
                metadata().create_all(store.connection)
                for version, table, column, declaration in ADDED_COLUMNS:
                    if before < version:
                        store.execute(
                            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}"
                        )
                store.execute("DELETE FROM schema_version")
                store.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        except BaseException:
            with suppress(StateError):
                store.execute("ROLLBACK")
            raise
        store.execute("COMMIT")
        return before, max(before, SCHEMA_VERSION)
    except sa_exc.SQLAlchemyError as exc:
        raise database_error(url, exc) from exc
    finally:
        store.close()
