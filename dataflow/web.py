"""The operator's page: run history at ``/``, Prometheus metrics at ``/metrics``, ``/healthz``.

Served by ``dataflow schedule ... --http HOST:PORT`` (a daemon thread beside the scheduler;
next runs come from its jobs) and ``dataflow ui [FILE_OR_DIR...] --http HOST:PORT`` (no
scheduling; next runs from the files' trigger blocks). The standard library's
ThreadingHTTPServer; each request opens its own ledger connection, so the page reads what
every process sharing the state directory recorded. The page is plain server-rendered HTML,
no JavaScript, every value escaped; ``?dataflow=NAME`` shows one dataflow, ``&limit=N`` more
runs. ``/healthz`` answers 200 ``ok``, or 503 when the state database cannot be read.
"""

from __future__ import annotations

import html
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dataflow import metrics
from dataflow.errors import ConfigError, FatalError, StateError
from dataflow.ledger import Ledger

log = logging.getLogger(__name__)

NextRuns = Callable[[], dict[str, datetime | None]]
MAX_LIMIT = 500


@dataclass
class Site:
    directory: Path  # the state directory
    next_runs: NextRuns = dict
    registry: Any = field(init=False)

    def __post_init__(self) -> None:
        self.registry = metrics.registry(self.ledger)

    def ledger(self) -> Ledger:
        return Ledger(self.directory)


def triggers_of(paths: list[Path]) -> NextRuns:
    """Next runs from the trigger blocks of the dataflow files (for ``dataflow ui``)."""
    from dataflow.config import load_dataflow
    from dataflow.scheduler import discover

    triggers: dict[str, Any] = {}
    for path in discover(paths):
        try:
            dataflow = load_dataflow(path)
        except ConfigError as exc:
            name, trigger = _trigger_only(path)  # the page needs no secrets: try the trigger
            if name is None:
                log.warning("%s: invalid, its next run is not shown: %s", path, exc)
            else:
                triggers[name] = trigger
            continue
        enabled = dataflow.model.enabled
        triggers[dataflow.name] = dataflow.trigger if enabled else None

    def next_runs() -> dict[str, datetime | None]:
        now = datetime.now(UTC)
        return {
            name: (trigger.next_fire(None, now) if trigger is not None else None)
            for name, trigger in triggers.items()
        }

    return next_runs


def _trigger_only(path: Path) -> tuple[str | None, Any]:
    """(name, trigger block) of a file that does not load (a secret not set here, say)."""
    import yaml

    from dataflow import registry
    from dataflow.block import Trigger

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        name = doc["name"] if isinstance(doc["name"], str) else None
        for block in doc.get("blocks") or []:
            cls = registry.resolve(str(block.get("type")))
            if cls is not None and issubclass(cls, Trigger):
                return name, cls(cls.Config.model_validate(block))
    except Exception:  # any problem: the file is reported as invalid, without next run
        return None, None
    return name, None


# the page ----------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem auto;max-width:1320px;padding:0 1rem;
color:#1b1f24}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.meta{color:#57606a}table{border-collapse:collapse;width:100%;margin:.3rem 0 .8rem}
th,td{border:1px solid #d0d7de;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.path{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.status{font-weight:600;padding:0 .35rem;border-radius:3px}
.success{background:#dafbe1}.partial{background:#fff8c5}.failure{background:#ffebe9}
.no_files,.duplicate{background:#eaeef2}.running,.in_progress{background:#ddf4ff}
section.run{border-top:2px solid #d0d7de;margin-top:1rem;padding-top:.3rem}
table.errors{width:auto;margin-left:1.5rem}form{margin:.6rem 0}
"""
FILE_COLUMNS = (
    "rows_total",
    "rows_filtered",
    "rows_rejected",
    "rows_sent",
    "rows_succeeded",
    "rows_failed",
)


def e(value: object) -> str:
    return "-" if value is None or value == "" else html.escape(str(value), quote=True)


def _status(value: str | None) -> str:
    name = value or "running"
    return f'<span class="status {e(name)}">{e(name)}</span>'


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "not scheduled"


def _accuracy(files: list[dict[str, Any]]) -> str:
    total = sum(f["rows_total"] or 0 for f in files)
    ok = sum(f["rows_succeeded"] or 0 for f in files)
    return f"{100 * ok / total:.1f}%" if total else "-"


def page(site: Site, dataflow: str | None, limit: int) -> str:
    ledger = site.ledger()
    where = (
        f"state database {ledger.where}"
        if ledger.postgres
        else f"state directory {ledger.directory}"
    )
    try:
        names = [r["dataflow"] for r in ledger.select("SELECT DISTINCT dataflow FROM runs")]
        next_runs = site.next_runs()
        names = sorted(set(names) | set(next_runs))
        last = {name: ledger.history(name, 1) for name in names}
        runs = ledger.history(dataflow or None, limit)
        summaries = error_summaries(ledger, [r["run_id"] for r in runs])
    finally:
        ledger.close()
    body = [
        "<h1>dataflow — run history</h1>",
        f'<p class="meta">{e(where)} · generated '
        f"{e(datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC'))}</p>",
        _dataflows_table(names, next_runs, last),
        _filter_form(names, dataflow, limit),
        f"<h2>Runs{' of ' + e(dataflow) if dataflow else ''}</h2>",
    ]
    body += [_run_section(run, summaries) for run in runs] or ["<p>No runs recorded.</p>"]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dataflow runs</title><style>{STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )


def error_summaries(ledger: Ledger, run_ids: list[str]) -> dict[tuple[str, str], list[Any]]:
    """(stage, code, message, count) rows of each (run_id, lineage_id), commonest first."""
    out: dict[tuple[str, str], list[Any]] = {}
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for r in ledger.select(
            f"SELECT * FROM error_summary WHERE run_id IN ({marks}) "
            "ORDER BY count DESC, stage, code, message",
            tuple(chunk),
        ):
            key = (r["run_id"], r["lineage_id"])
            out.setdefault(key, []).append((r["stage"], r["code"], r["message"], r["count"]))
    return out


def _dataflows_table(
    names: list[str], next_runs: dict[str, datetime | None], last: dict[str, list[Any]]
) -> str:
    rows = []
    for name in names:
        run = last[name][0] if last[name] else None
        rows.append(
            f'<tr class="dataflow" data-name="{e(name)}">'
            f'<td><a href="/?dataflow={e(name)}">{e(name)}</a></td>'
            f'<td class="next">{e(_when(next_runs.get(name)))}</td>'
            f'<td class="last-started">{e(run["started_at"] if run else None)}</td>'
            f'<td class="last-outcome">{_status(run["status"]) if run else "never run"}</td>'
            f'<td class="n accuracy">{_accuracy(run["files"]) if run else "-"}</td></tr>'
        )
    return (
        "<h2>Dataflows</h2><table><thead><tr><th>dataflow</th><th>next run</th>"
        "<th>last run</th><th>last outcome</th><th>accuracy</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _filter_form(names: list[str], selected: str | None, limit: int) -> str:
    options = ['<option value="">all dataflows</option>'] + [
        f'<option value="{e(n)}"{" selected" if n == selected else ""}>{e(n)}</option>'
        for n in names
    ]
    return (
        '<form method="get" action="/"><label>dataflow <select name="dataflow">'
        + "".join(options)
        + f'</select></label> <label>runs <input name="limit" size="4" value="{limit}">'
        "</label> <button>show</button></form>"
    )


def _run_section(run: dict[str, Any], summaries: dict[tuple[str, str], list[Any]]) -> str:
    dry = " (dry run)" if run["dry_run"] else ""
    head = (
        f'<section class="run" id="run-{e(run["run_id"])}" data-run-id="{e(run["run_id"])}">'
        f"<p><b>{e(run['dataflow'])}</b> {_status(run['status'])}{dry} · started "
        f"{e(run['started_at'])} · finished {e(run['finished_at'])} · run "
        f"<code>{e(run['run_id'])}</code></p>"
    )
    if run.get("reason"):
        head += f'<p class="reason">{e(run["reason"])}</p>'
    if not run["files"]:
        return head + '<p class="meta">no files</p></section>'
    header = "".join(
        f"<th>{c}</th>"
        for c in ("file", "status", "total", "filtered", "rejected", "sent", "succeeded")
    )
    header += "<th>failed</th><th>accuracy</th><th>processed as</th><th>error file</th>"
    rows = [_file_row(run, f, summaries) for f in run["files"]]
    return head + f"<table><thead><tr>{header}</tr></thead>{''.join(rows)}</table></section>"


def _file_row(
    run: dict[str, Any], f: dict[str, Any], summaries: dict[tuple[str, str], list[Any]]
) -> str:
    cells = "".join(f'<td class="n {c}">{e(f[c])}</td>' for c in FILE_COLUMNS)
    row = (
        f'<tbody class="file" data-lineage-id="{e(f["lineage_id"])}"><tr>'
        f'<td class="name">{e(f["name"])}</td><td>{_status(f["status"])}</td>{cells}'
        f'<td class="n accuracy">{_accuracy([f])}</td>'
        f'<td class="path processed">{e(f["processed_path"])}</td>'
        f'<td class="path error-file">{e(f["error_file"])}</td></tr>'
    )
    if f.get("reason") and f["status"] != "duplicate":
        row += f'<tr><td colspan="13" class="reason">{e(f["reason"])}</td></tr>'
    errors = summaries.get((run["run_id"], f["lineage_id"]))
    if errors:
        lines = "".join(
            f'<tr class="error"><td class="stage">{e(stage)}</td><td class="code">{e(code)}</td>'
            f'<td class="message">{e(message)}</td><td class="n count">{e(count)}</td></tr>'
            for stage, code, message, count in errors
        )
        row += (
            '<tr><td colspan="13"><table class="errors"><thead><tr><th>stage</th><th>code</th>'
            f"<th>message</th><th>rows</th></tr></thead><tbody>{lines}</tbody></table></td></tr>"
        )
    return row + "</tbody>"


# the server --------------------------------------------------------------------------------


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dataflow"

        def do_GET(self) -> None:  # http.server's name
            url = urlsplit(self.path)
            try:
                if url.path == "/":
                    self._page(parse_qs(url.query))
                elif url.path == "/metrics":
                    self._send(200, metrics.render(site.registry), metrics.CONTENT_TYPE)
                elif url.path == "/healthz":
                    self._health()
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")
            except StateError as exc:
                self._send(503, f"{exc}\n".encode(), "text/plain; charset=utf-8")

        def _page(self, query: dict[str, list[str]]) -> None:
            dataflow = query.get("dataflow", [""])[0] or None
            raw = query.get("limit", ["50"])[0]
            limit = min(int(raw), MAX_LIMIT) if raw.isdigit() and int(raw) > 0 else 50
            text = page(site, dataflow, limit)
            self._send(200, text.encode(), "text/html; charset=utf-8")

        def _health(self) -> None:
            ledger = site.ledger()
            try:
                ledger.select("SELECT 1 FROM runs LIMIT 1")
            finally:
                ledger.close()
            self._send(200, b"ok\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def start(address: tuple[str, int], site: Site) -> ThreadingHTTPServer:
    """Serve `site` on `address` from a daemon thread; the server (``shutdown()`` stops it)."""
    cls = _Server6 if ":" in address[0] else _Server
    try:
        server = cls(address, _handler(site))
    except OSError as exc:
        raise FatalError(
            f"cannot serve on {address[0]}:{address[1]}: {exc.strerror or exc}; choose another "
            "--http HOST:PORT"
        ) from exc
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    shown = f"[{host}]" if ":" in host else host
    log.info("serving the run-history page on http://%s:%d/ (metrics at /metrics)", shown, port)
    threading.Thread(target=server.serve_forever, name="dataflow-http", daemon=True).start()
    return server


def serve_ui(address: tuple[str, int], site: Site) -> int:
    """``dataflow ui``: serve until SIGTERM/SIGINT, then exit 0."""
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    server = start(address, site)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0
