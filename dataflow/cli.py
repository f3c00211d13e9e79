"""The ``dataflow`` command: validate, run, schedule, runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from dataflow import __version__
from dataflow.errors import ConfigError
from dataflow.redact import RedactingFilter, redact
from dataflow.report import EXIT_CODES, RunReport

log = logging.getLogger("dataflow")

EXIT_CONFIG = 2


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("paramiko", "httpx", "httpcore", "gnupg", "apscheduler.executors"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dataflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dataflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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

    p = sub.add_parser("runs", help="run history with per-file counts")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20)

    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    handler = {"validate": _validate, "run": _run, "schedule": _schedule, "runs": _runs}
    return int(handler[args.command](args))


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

    return serve(args.paths)


def _runs(args: argparse.Namespace) -> int:
    from dataflow.ledger import Ledger

    ledger = Ledger()
    try:
        history = ledger.history(args.name, args.limit)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(history, indent=2))
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
    if not history:
        print("no runs recorded", file=sys.stderr)
    return 0


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
