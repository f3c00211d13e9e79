"""``dataflow check FILE...``: pre-flight of dataflows against the real servers.

Each check is one line: ``ok``, ``FAIL`` (with what went wrong and what to fix) or ``skip``
(it needs a check that failed). Nothing stays changed on any server:

- SFTP: the login, with the host key checked against `known_hosts` (an unknown key is refused
  with the commands to fetch it and compare its fingerprint with the vendor's; never trusted
  blindly); `source_directory` listed (how many files are ready now); in `processed_directory`
  and `error_directory` a probe file written, renamed and removed (a missing directory is
  created and removed again); a probe file written in `source_directory`, moved into
  `processed_directory` and removed, as every processed file is moved. The probes have hidden
  ``.dataflow-probe-...`` names, which runs never pick up.
- PGP: the private key is imported into a throwaway GnuPG home and unlocks with its
  passphrase (a few bytes encrypted to it are decrypted).
- API: with OAuth a token is obtained; then the endpoint is called once with an empty body
  (no record), which the API authenticates before it validates, so refused credentials are
  told apart from accepted ones without sending anything.
- Other (plugin) blocks: opened and closed, as a run would; a source's files are listed.

Exit code: 0 every check passed, 1 one failed, 2 a file is invalid (nothing was connected for
it). No secret appears in any line (they pass through `dataflow.redact`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from dataflow.block import Block, RunContext, Sink, Source
from dataflow.config import Dataflow, load_dataflow
from dataflow.errors import ConfigError, DataflowError
from dataflow.httpauth import OAuthConfig
from dataflow.redact import redact
from dataflow_blocks.http_write import HttpWrite
from dataflow_blocks.pgp_decrypt import PgpDecrypt
from dataflow_blocks.sftp_read import SftpRead

Status = Literal["ok", "FAIL", "skip"]
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


@dataclass(frozen=True)
class Line:
    status: Status
    what: str  # what was checked
    detail: str = ""  # FAIL: what went wrong and the fix; skip: why

    def text(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return redact(f"{self.status:<4}  {self.what}{tail}")


def attempt(what: str, action: Callable[[], str | None], done: str = "") -> Line:
    """Run one check: ``ok`` with what `action` returned (or `done`), or ``FAIL`` with why."""
    try:
        more = action() or done
    except DataflowError as exc:
        return Line("FAIL", what, str(exc))
    except Exception as exc:  # a block's bug must not hide the other checks
        return Line("FAIL", what, f"unexpected error: {type(exc).__name__}: {exc}")
    return Line("ok", what, more)


async def attempt_async(what: str, action: Callable[[], Awaitable[str | None]]) -> Line:
    try:
        more = await action() or ""
    except DataflowError as exc:
        return Line("FAIL", what, str(exc))
    except Exception as exc:
        return Line("FAIL", what, f"unexpected error: {type(exc).__name__}: {exc}")
    return Line("ok", what, more)


def check_sftp(source: SftpRead) -> Iterator[Line]:
    c = source.config
    login = attempt(f"sftp login {source.where}", source.open, "host key matches known_hosts")
    yield login
    listing = f"sftp source_directory {c.source_directory}"
    probes = {
        "processed_directory": f"sftp processed_directory {c.processed_directory}",
        "error_directory": f"sftp error_directory {c.error_directory}",
    }
    move = f"sftp move {c.source_directory} -> {c.processed_directory}"
    if login.status != "ok":
        for what in (listing, *probes.values(), move):
            yield Line("skip", what, "needs the login")
        return
    yield attempt(
        listing,
        lambda: (
            f"listed, {source.count_ready()} file(s) ready (filename_pattern {c.filename_pattern})"
        ),
    )
    done = "probe file written, renamed, removed"
    results = {
        key: attempt(what, functools.partial(source.probe_directory, key), done)
        for key, what in probes.items()
    }
    yield from results.values()
    if results["processed_directory"].status != "ok":
        yield Line("skip", move, "needs a writable processed_directory")
        return
    yield attempt(move, source.probe_move, "probe file written, moved, removed")


def check_pgp(step: PgpDecrypt) -> Iterator[Line]:
    what = f"pgp private key of block {step.config.name!r}"
    line = attempt(what, step.open, "unlocks with its passphrase")
    if line.status == "ok" and step.unchecked is not None:
        line = Line(
            "skip",
            what,
            f"imported, but its passphrase could not be checked: {step.unchecked}; is the key "
            "expired? The first file's decryption will tell",
        )
    yield line


def check_api(sink: HttpWrite) -> Iterator[Line]:
    credentials = f"api {sink.config.auth.type} credentials"

    async def probe() -> list[Line]:
        lines: list[Line] = []
        if isinstance(sink.config.auth, OAuthConfig):
            lines.append(await attempt_async("api OAuth token", sink.probe_token))
            if lines[-1].status != "ok":
                return [*lines, Line("skip", credentials, "needs a token")]
        return [*lines, await attempt_async(credentials, sink.probe_endpoint)]

    yield from asyncio.run(probe())


def check_other(block: Block) -> Iterator[Line]:
    """A block without a check of its own (a plugin): opened as a run would; a source lists."""
    what = f"block {block.config.name!r} (type {block.config.type})"
    opened = attempt(what, block.open, "opened")
    yield opened
    if opened.status == "ok" and isinstance(block, Source):
        source = block
        yield attempt(what, lambda: f"listed, {len(source.list_files())} file(s) ready")


def check_block(block: Block) -> Iterator[Line]:
    if isinstance(block, SftpRead):
        return check_sftp(block)
    if isinstance(block, PgpDecrypt):
        return check_pgp(block)
    if isinstance(block, HttpWrite):
        return check_api(block)
    if isinstance(block, Source | Sink) or block.kind == "step":
        return check_other(block)
    return iter(())  # the transform and the trigger touch no server


def check_dataflow(dataflow: Dataflow) -> Iterator[Line]:
    """Every check of one dataflow, as it completes; every block is closed at the end and
    the private work directory removed."""
    # mode 700; named like a run's, so a killed check's is swept by the next run
    workdir = Path(tempfile.mkdtemp(prefix=f"dataflow-{os.getpid()}-check-"))
    context = RunContext(
        dataflow=dataflow.name,
        template=dataflow.template,
        workdir=workdir,
        base_dir=dataflow.path.resolve().parent,
        dry_run=True,  # the checks probe the directories themselves
    )
    blocks: list[Block] = []
    try:
        for spec in dataflow.blocks:
            block = spec.cls(spec.config, context)
            blocks.append(block)
            yield from check_block(block)
    finally:
        for block in reversed(blocks):
            with contextlib.suppress(Exception):  # close() is safe after a failed open()
                block.close()
        shutil.rmtree(workdir, ignore_errors=True)


class Printer:
    """The lines to `out`: colored when it is a terminal (rich), plain text otherwise."""

    COLORS = {"ok": "green", "FAIL": "bold red", "skip": "yellow"}

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.console = None
        if out.isatty():
            from rich.console import Console

            self.console = Console(file=out, highlight=False, soft_wrap=True)

    def header(self, text: str) -> None:
        self.write(redact(text), "bold", len(text))

    def line(self, line: Line) -> None:
        self.write("  " + line.text(), self.COLORS[line.status], 2 + len(line.status))

    def write(self, text: str, style: str, styled: int) -> None:
        """`text` as one line; its first `styled` characters in `style` on a terminal."""
        if self.console is None:
            print(text, file=self.out, flush=True)
            return
        from rich.text import Text

        rich_text = Text(text)
        rich_text.stylize(style, 0, styled)
        self.console.print(rich_text)


def main(paths: list[Path], out: TextIO | None = None) -> int:
    """Check every file; the exit code of ``dataflow check``."""
    printer = Printer(out or sys.stdout)
    failed = invalid = False
    for path in paths:
        try:
            dataflow = load_dataflow(path)
        except ConfigError as exc:
            invalid = True
            for problem in exc.problems:
                text = redact(str(problem))
                printer.write(text, "red", len(text))
            continue
        printer.header(f"{path} ({dataflow.name})")
        for line in check_dataflow(dataflow):
            printer.line(line)
            failed |= line.status != "ok"
    if invalid:
        return EXIT_CONFIG
    return EXIT_FAILED if failed else EXIT_OK
