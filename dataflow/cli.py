"""The ``dataflow`` command (click): validate, run, retry, schedule, worker, runs, ui, check,
schema, db.

Every command's ``--help`` ends with an example. ``-v`` and ``--log-format`` are accepted
before or after the command. Usage errors exit 2 with click's message; the other exit codes
are each command's own (contract §4 and §8).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dataflow import __version__, console, logs
from dataflow.errors import ConfigError, StateError
from dataflow.logs import LogFormat
from dataflow.redact import redact
from dataflow.report import EXIT_CODES, RunReport

log = logging.getLogger("dataflow")

EXIT_CONFIG = 2
SUMMARY_KEYS = ("stage", "code", "message", "count")


def _setup_logging(verbose: bool, log_format: LogFormat = "text") -> None:
    handler = logs.handler(log_format)  # context, RedactingFilter, text or JSON lines
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "httpcore", "apscheduler.executors"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # python-gnupg logs gpg's status lines at WARNING, and a broken pipe (gpg stopped reading
    # a file that is not PGP data) as an ERROR with a traceback; pgp_decrypt says what they mean
    logging.getLogger("gnupg").setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    # paramiko logs a dropped connection with a traceback; sftp_read says it in its own words
    logging.getLogger("paramiko").setLevel(logging.WARNING if verbose else logging.CRITICAL + 1)


class _Converted(click.ParamType[Any]):
    """A click type from a text -> value function that raises argparse.ArgumentTypeError."""

    def __init__(self, name: str, convert: Callable[[str], Any]) -> None:
        self.name = name
        self._convert = convert

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._convert(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = _Converted("HOST:PORT", console.parse_address)
SINCE = _Converted("DATE", console.date_bound)
UNTIL = _Converted("DATE", lambda text: console.date_bound(text, end=True))
PATH = click.Path(path_type=Path)
LOG_FORMAT_HELP = "log lines as text (default) or JSON objects"


def _example(*lines: str) -> str:
    """A help epilog with examples, kept as written (click rewraps paragraphs otherwise)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


@click.group(
    name="dataflow",
    help="Scheduled, YAML-configured file-ingestion dataflows (SFTP -> PGP -> mapping -> API).",
    epilog=_example("dataflow validate configs/acme/*.yaml", "dataflow run configs/acme/x.yaml"),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="dataflow", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", help=LOG_FORMAT_HELP)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, log_format: str) -> None:
    ctx.obj = {"verbose": verbose, "log_format": log_format}


Handler = Callable[..., int]


def command(
    name: str, help: str, example: tuple[str, ...], **settings: Any
) -> Callable[[Handler], click.Command]:
    """A subcommand that also takes -v and --log-format after its name, sets up logging from
    both positions (the later wins), then calls the handler with its own arguments."""

    def decorate(handler: Handler) -> click.Command:
        @click.option("-v", "--verbose", "sub_verbose", is_flag=True, help="debug logging")
        @click.option(
            "--log-format", "sub_log_format", type=click.Choice(logs.FORMATS), help=LOG_FORMAT_HELP
        )
        @click.pass_context
        def callback(
            ctx: click.Context, /, sub_verbose: bool, sub_log_format: str | None, **kwargs: Any
        ) -> int:
            top = ctx.find_root().obj or {}
            verbose = bool(top.get("verbose")) or sub_verbose
            log_format: LogFormat = sub_log_format or top.get("log_format") or "text"  # type: ignore[assignment]
            _setup_logging(verbose, log_format)
            code = int(handler(verbose=verbose, log_format=log_format, **kwargs))
            if code:
                ctx.exit(code)  # also under click's standalone mode (its CliRunner)
            return code

        callback.__doc__ = handler.__doc__
        own = getattr(callback, "__click_params__", [])
        callback.__click_params__ = [*own, *getattr(handler, "__click_params__", [])]  # type: ignore[attr-defined]
        short = help.split(";")[0].split(". ")[0]
        settings.setdefault("short_help", short)
        return cli.command(name, help=help, epilog=_example(*example), **settings)(callback)

    return decorate


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (usage errors: 2, with click's message)."""
    try:
        result = cli.main(args=argv, prog_name="dataflow", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.ClickException as exc:  # a usage error: 2
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:  # Ctrl-C at a prompt
        print("aborted", file=sys.stderr)
        return 130
    return int(result or 0)


@command(
    "validate",
    "check dataflow files without connecting; exit 0 valid, 2 invalid",
    ("dataflow validate configs/acme/*.yaml",),
)
@click.argument("files", nargs=-1, required=True, type=PATH)
def _validate(files: tuple[Path, ...], **_: Any) -> int:
    from dataflow.config import load_dataflow

    bad = False
    for path in files:
        try:
            dataflow = load_dataflow(path)
        except ConfigError as exc:
            bad = True
            for problem in exc.problems:
                print(redact(str(problem)))
            continue
        print(
            f"{path}: ok ({dataflow.name}, template {dataflow.template.name}, "
            f"{len(dataflow.blocks)} blocks)"
        )
    return EXIT_CONFIG if bad else 0


@command(
    "run",
    "process every matching file now; exit 0 success or no files, 3 partial, 1 failure, "
    "2 config error",
    (
        "dataflow run configs/acme/earned.yaml --json",
        "dataflow run configs/acme/earned.yaml --force   # send again content already done",
    ),
)
@click.argument("file", type=PATH)
@click.option("--dry-run", is_flag=True, help="transform and report; no API calls, no files moved")
@click.option("--json", "as_json", is_flag=True, help="print the run report to stdout")
@click.option(
    "--force",
    is_flag=True,
    help="also process files whose content this dataflow already completed (a new lineage, "
    "new bulk requestIds)",
)
def _run(file: Path, dry_run: bool, as_json: bool, force: bool, log_format: str, **_: Any) -> int:
    from dataflow.runner import run

    dataflow = _load(file)
    if dataflow is None:
        return EXIT_CONFIG
    return _report(
        lambda: run(dataflow, dry_run=dry_run, force=force), as_json, log_format == "text"
    )


@command(
    "retry",
    "send again only the rows of a processed file (LINEAGE_ID) that failed at the "
    "destination; a new lineage and error file; exit codes as run (2 also: this lineage "
    "cannot be retried)",
    (
        "dataflow runs acme-earned-badges --json   # the lineage_id of each file",
        "dataflow retry configs/acme/earned.yaml 6f1c...-lineage-id --json",
    ),
)
@click.argument("file", type=PATH)
@click.argument("lineage_id")
@click.option("--json", "as_json", is_flag=True, help="print the run report to stdout")
def _retry(file: Path, lineage_id: str, as_json: bool, log_format: str, **_: Any) -> int:
    from dataflow.ledger import RetryRefused
    from dataflow.runner import NothingToRetry, retry

    dataflow = _load(file)
    if dataflow is None:
        return EXIT_CONFIG
    try:
        return _report(lambda: retry(dataflow, lineage_id), as_json, log_format == "text")
    except NothingToRetry as exc:
        print(f"dataflow retry: {redact(str(exc))}", file=sys.stderr)
        return 0
    except RetryRefused as exc:
        print(f"dataflow retry: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG


def _load(file: Path) -> Any:
    """The dataflow of `file`, or None after printing its problems (exit 2)."""
    from dataflow.config import load_dataflow

    try:
        return load_dataflow(file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(redact(str(problem)), file=sys.stderr)
        return None


def _report(job: Callable[[], RunReport], as_json: bool, text_logs: bool) -> int:
    """Run `job` (with the progress bar on a terminal), print its summary (and report)."""
    from dataflow.shutdown import install_handlers

    install_handlers()
    bar = console.stderr_is_terminal() and text_logs
    with console.progress(bar):  # rich progress on a terminal, only log lines elsewhere
        report = job()
    _print_summary(report)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    return EXIT_CODES[report.status]


@command(
    "check",
    "pre-flight against the real servers (SFTP, PGP key, API), changing nothing. One line "
    "per check: ok, or FAIL with what to fix. Exit 0 all passed, 1 a check failed, 2 a file "
    "is invalid",
    ("dataflow check configs/acme/*.yaml",),
)
@click.argument("files", nargs=-1, required=True, type=PATH)
def _check(files: tuple[Path, ...], verbose: bool, **_: Any) -> int:
    from dataflow import check

    if not verbose:  # the check lines say it all; the blocks' progress lines would not
        logging.getLogger().setLevel(logging.WARNING)
    return check.main(list(files))


@command(
    "schema",
    "print the JSON Schema of a dataflow file (every block type, plugins too)",
    (
        "dataflow schema > dataflow.schema.json, then put",
        "'# yaml-language-server: $schema=./dataflow.schema.json' atop a dataflow file",
    ),
)
@click.option("--docs", is_flag=True, help="print the blocks reference (Markdown)")
def _schema(docs: bool, **_: Any) -> int:
    from dataflow import schema

    if docs:
        sys.stdout.write(schema.blocks_markdown())
    else:
        print(json.dumps(schema.dataflow_schema(), indent=2))
    return 0


def _print_summary(report: RunReport) -> None:
    out = sys.stderr
    mode = " (dry run)" if report.dry_run else ""
    print(f"\n{report.dataflow}: {report.status}{mode}", file=out)
    if report.reason:
        print(f"  {report.reason}", file=out)
    for f in report.files:
        accuracy = f"{100 * f.accuracy:.1f}%" if f.accuracy is not None else "-"
        print(
            f"  {f.name}: {f.status}; {f.rows_total} rows: {f.rows_succeeded} accepted, "
            f"{f.rows_rejected} rejected, {f.rows_failed} failed by the API, "
            f"{f.rows_filtered} blank; accuracy {accuracy}",
            file=out,
        )
        if f.retry_of:
            print(f"    retry of lineage {f.retry_of} (send {f.send_no})", file=out)
        elif f.send_no:
            print(f"    sent again (send {f.send_no} of this content)", file=out)
        if f.processed_path:
            print(f"    original  -> {f.processed_path}", file=out)
        if f.error_file:
            print(f"    errors    -> {f.error_file}", file=out)
        if f.reason and f.status != "duplicate":
            print(f"    reason: {f.reason}", file=out)


@command(
    "schedule",
    "run enabled dataflows on their triggers until SIGTERM/SIGINT",
    (
        "dataflow schedule configs/",
        "dataflow schedule configs/ --http 127.0.0.1:8080   # also the page and /metrics",
    ),
)
@click.argument("paths", nargs=-1, required=True, type=PATH)
@click.option("--http", type=ADDRESS, metavar="HOST:PORT", help="serve page and metrics")
@click.option(
    "--executor",
    type=click.Choice(["local", "celery"]),
    default="local",
    show_default=True,
    help="run here, or put each due run on the Celery queue (DATAFLOW_BROKER_URL)",
)
def _schedule(
    paths: tuple[Path, ...], http: tuple[str, int] | None, executor: str, **_: Any
) -> int:
    from dataflow.celery_app import BrokerSettingError
    from dataflow.scheduler import serve

    try:
        return serve(list(paths), http=http, executor=executor)
    except BrokerSettingError as exc:
        print(f"dataflow schedule: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StateError as exc:
        print(f"dataflow schedule: {exc}", file=sys.stderr)
        return 1


@command(
    "worker",
    "run the dataflows put on the Celery queue (DATAFLOW_BROKER_URL) until SIGTERM",
    ("dataflow worker --concurrency 2   # with DATAFLOW_BROKER_URL and DATAFLOW_STATE_URL",),
)
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
    help="dataflows run at once by this worker",
)  # fmt: skip
def _worker(concurrency: int, verbose: bool, **_: Any) -> int:
    from dataflow.celery_app import BrokerSettingError, serve_worker
    from dataflow.db import state_url

    try:
        if state_url() is None:
            log.warning(
                "DATAFLOW_STATE_URL is not set: this worker keeps its state in the local "
                "state directory, which only workers on this machine share"
            )
        return serve_worker(concurrency, verbose)
    except BrokerSettingError as exc:
        print(f"dataflow worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG


@command(
    "ui",
    "serve the run-history page and metrics, without scheduling",
    ("dataflow ui configs/ --http 127.0.0.1:8080",),
)
@click.argument("paths", nargs=-1, type=PATH)
@click.option(
    "--http",
    type=ADDRESS,
    metavar="HOST:PORT",
    required=True,
    help="where to serve the page, /metrics and /healthz",
)
def _ui(paths: tuple[Path, ...], http: tuple[str, int], **_: Any) -> int:
    """PATHS: dataflow files or folders (for their next runs)."""
    from dataflow import web
    from dataflow.errors import FatalError
    from dataflow.ledger import state_dir

    try:
        site = web.Site(state_dir(), web.triggers_of(list(paths)))
        return web.serve_ui(http, site)
    except FatalError as exc:
        print(f"dataflow ui: {exc}", file=sys.stderr)
        return 1


@command(
    "runs",
    "run history with per-file counts",
    (
        "dataflow runs acme-earned-badges --since 2026-11-01 --errors",
        "dataflow runs --json --limit 5",
    ),
)
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the history as JSON")
@click.option("--limit", type=int, default=20, show_default=True, help="at most this many runs")
@click.option("--since", type=SINCE, help="runs started on/after (ISO date)")
@click.option("--until", type=UNTIL, help="runs started before the end of (ISO date)")
@click.option("--errors", is_flag=True, help="show each file's error summary")
@click.option("--table", is_flag=True, help="a table also when not on a terminal")
def _runs(
    name: str | None,
    as_json: bool,
    limit: int,
    since: str | None,
    until: str | None,
    errors: bool,
    table: bool,
    **_: Any,
) -> int:
    from dataflow.ledger import Ledger

    try:
        ledger = Ledger()
        try:
            history = ledger.history(name, limit, since, until)
            summaries = _error_summaries(ledger, history) if errors else {}
        finally:
            ledger.close()
    except StateError as exc:
        print(f"dataflow runs: {exc}", file=sys.stderr)
        return 1
    if as_json:
        for run in history if errors else []:
            for f in run["files"]:
                rows = summaries.get((run["run_id"], f["lineage_id"]), [])
                f["errors"] = [dict(zip(SUMMARY_KEYS, r, strict=True)) for r in rows]
        print(json.dumps(history, indent=2))
        return 0
    if table or sys.stdout.isatty():
        console.runs_table(history, summaries)
        return 0
    for run in history:
        print(
            f"{run['started_at']}  {run['dataflow']}  {run['status'] or 'running'}"
            f"{'  (dry run)' if run['dry_run'] else ''}  {run['run_id']}"
        )
        if run.get("reason"):
            print(f"    {run['reason']}")
        for f in run["files"]:
            print("    " + _file_line(f))
            for stage, code, message, count in summaries.get((run["run_id"], f["lineage_id"]), []):
                print(f"        {count} x {stage} {code}: {message}")
    if not history:
        print("no runs recorded", file=sys.stderr)
    return 0


EXAMPLE_URL = "postgresql+psycopg://dataflow@db.internal/dataflow"


@cli.group(
    "db",
    help="the PostgreSQL state of several machines (DATAFLOW_STATE_URL)",
    epilog=_example(f"dataflow db upgrade   # with DATAFLOW_STATE_URL={EXAMPLE_URL}"),
)
def _db() -> None:
    pass


@_db.command(
    "upgrade",
    help="create or migrate the schema in DATAFLOW_STATE_URL (idempotent)",
    epilog=_example(f"dataflow db upgrade   # with DATAFLOW_STATE_URL={EXAMPLE_URL}"),
)
def _db_upgrade() -> int:
    from dataflow import db

    _setup_logging(False)
    url = db.state_url()
    if url is None:
        print(
            "dataflow db upgrade: DATAFLOW_STATE_URL is not set (the SQLite state in "
            "DATAFLOW_STATE_DIR needs no upgrade: it is migrated when opened)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        before, now = db.upgrade(url)
    except StateError as exc:
        print(f"dataflow db upgrade: {exc}", file=sys.stderr)
        return 1
    state = "already at" if before == now else f"upgraded from {before} to"
    print(f"the state database {db.shown(url)} is {state} schema {now}", file=sys.stderr)
    return 0


def _error_summaries(ledger: Any, history: list[dict[str, Any]]) -> dict[Any, list[Any]]:
    from dataflow.web import error_summaries

    return error_summaries(ledger, [run["run_id"] for run in history])


def _file_line(f: dict[str, Any]) -> str:
    total = f["rows_total"] or 0
    accuracy = f"{100 * (f['rows_succeeded'] or 0) / total:.1f}%" if total else "-"
    return (
        f"{f['name']}: {f['status']}  total {total}, sent {f['rows_sent']}, "
        f"ok {f['rows_succeeded']}, rejected {f['rows_rejected']}, failed "
        f"{f['rows_failed']}, accuracy {accuracy}"
        + (f", retry of {f['retry_of']}" if f.get("retry_of") else "")
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
