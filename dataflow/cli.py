"""The ``dataflow`` command: validate, run, schedule, runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

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
    # python-gnupg logs gpg's status lines at WARNING; pgp_decrypt says what they mean
    logging.getLogger("gnupg").setLevel(logging.DEBUG if verbose else logging.ERROR)
    # paramiko logs a dropped connection with a traceback; sftp_read says it in its own words
    logging.getLogger("paramiko").setLevel(logging.WARNING if verbose else logging.CRITICAL + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dataflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dataflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    log_format = {"choices": logs.FORMATS, "help": "log lines as text (default) or JSON objects"}
    parser.add_argument("--log-format", default="text", **log_format)  # type: ignore[arg-type]
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check dataflow files without connecting")
    p.add_argument("files", nargs="+", type=Path)

    p = sub.add_parser("run", help="process every matching file now")
    p.add_argument("file", type=Path)
    p.add_argument(
        "--dry-run", action="store_true", help="transform and report; no API calls, no files moved"
    )
    p.add_argument("--json", action="store_true", help="print the run report to stdout")

    p = sub.add_parser("schedule", help="run enabled dataflows on their triggers")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument(
        "--http", type=console.parse_address, metavar="HOST:PORT", help="serve page and metrics"
    )

    p = sub.add_parser("ui", help="serve the run-history page and metrics, without scheduling")
    p.add_argument("paths", nargs="*", type=Path, help="dataflow files (for their next runs)")
    p.add_argument("--http", type=console.parse_address, metavar="HOST:PORT", required=True)

    p = sub.add_parser(
        "check",
        help="pre-flight against the real servers (SFTP, PGP key, API), changing nothing",
        description="One line per check: ok, or FAIL with what to fix. Exit 0 all passed, "
        "1 a check failed, 2 a file is invalid. Example: dataflow check configs/acme/*.yaml",
    )
    p.add_argument("files", nargs="+", type=Path)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of a dataflow file (every block type, plugins too)",
        description="Example: dataflow schema > dataflow.schema.json, then put "
        "'# yaml-language-server: $schema=./dataflow.schema.json' atop a dataflow file",
    )
    p.add_argument("--docs", action="store_true", help="print the blocks reference (Markdown)")

    p = sub.add_parser("runs", help="run history with per-file counts")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--since", type=console.date_bound, help="runs started on/after (ISO date)")
    p.add_argument(
        "--until",
        type=lambda text: console.date_bound(text, end=True),
        help="runs started before the end of (ISO date)",
    )
    p.add_argument("--errors", action="store_true", help="show each file's error summary")
    p.add_argument("--table", action="store_true", help="a table also when not on a terminal")
    for each in sub.choices.values():  # also accepted after the command
        each.add_argument("--log-format", default=argparse.SUPPRESS, **log_format)  # type: ignore[arg-type]

    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.log_format)
    handler = {"validate": _validate, "run": _run, "schedule": _schedule, "runs": _runs}
    handler["ui"] = _ui
    handler["check"] = _check
    handler["schema"] = _schema
    return int(handler[args.command](args))


def _check(args: argparse.Namespace) -> int:
    from dataflow import check

    if not args.verbose:  # the check lines say it all; the blocks' progress lines would not
        logging.getLogger().setLevel(logging.WARNING)
    return check.main(args.files)


def _schema(args: argparse.Namespace) -> int:
    from dataflow import schema

    if args.docs:
        sys.stdout.write(schema.blocks_markdown())
    else:
        print(json.dumps(schema.dataflow_schema(), indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dataflow.config import load_dataflow

    bad = False
    for path in args.files:
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


def _run(args: argparse.Namespace) -> int:
    from dataflow.config import load_dataflow
    from dataflow.runner import run

    try:
        dataflow = load_dataflow(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(redact(str(problem)), file=sys.stderr)
        return EXIT_CONFIG
    from dataflow.shutdown import install_handlers

    install_handlers()
    bar = console.stderr_is_terminal() and args.log_format == "text"
    with console.progress(bar):  # rich progress on a terminal, only log lines elsewhere
        report = run(dataflow, dry_run=args.dry_run)
    _print_summary(report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    return EXIT_CODES[report.status]


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
        if f.processed_path:
            print(f"    original  -> {f.processed_path}", file=out)
        if f.error_file:
            print(f"    errors    -> {f.error_file}", file=out)
        if f.reason and f.status != "duplicate":
            print(f"    reason: {f.reason}", file=out)


def _schedule(args: argparse.Namespace) -> int:
    from dataflow.scheduler import serve

    return serve(args.paths, http=args.http)


def _ui(args: argparse.Namespace) -> int:
    from dataflow import web
    from dataflow.errors import FatalError
    from dataflow.ledger import state_dir

    try:
        site = web.Site(state_dir(), web.triggers_of(args.paths))
        return web.serve_ui(args.http, site)
    except FatalError as exc:
        print(f"dataflow ui: {exc}", file=sys.stderr)
        return 1


def _runs(args: argparse.Namespace) -> int:
    from dataflow.ledger import Ledger

    try:
        ledger = Ledger()
        try:
            history = ledger.history(args.name, args.limit, args.since, args.until)
            errors = _error_summaries(ledger, history) if args.errors else {}
        finally:
            ledger.close()
    except StateError as exc:
        print(f"dataflow runs: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for run in history if args.errors else []:
            for f in run["files"]:
                rows = errors.get((run["run_id"], f["lineage_id"]), [])
                f["errors"] = [dict(zip(SUMMARY_KEYS, r, strict=True)) for r in rows]
        print(json.dumps(history, indent=2))
        return 0
    if args.table or sys.stdout.isatty():
        console.runs_table(history, errors)
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
            for stage, code, message, count in errors.get((run["run_id"], f["lineage_id"]), []):
                print(f"        {count} x {stage} {code}: {message}")
    if not history:
        print("no runs recorded", file=sys.stderr)
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
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
