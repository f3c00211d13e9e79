"""The exception tree, classified by what the engine does next.

    DataflowError
    ├── ConfigError            the dataflow file is invalid: nothing runs (exit 2)
    ├── FatalError             stop the run, keep the current file for the next run (exit 1)
    │   ├── AuthError          the credentials were refused (SFTP, OAuth, Basic)
    │   ├── StateError         the state directory cannot be used (read-only, full)
    │   ├── ApiDown            the API kept failing (retries exhausted, no verdicts): alerts
    │   │                      report it as `api_down`
    │   └── Stopped            SIGTERM/SIGINT: in-flight requests finished, the rest resumes
    ├── FileRejected           this file cannot be processed: it goes to error_directory with a
    │                          one-row error file, and the next file goes on
    └── FileSkipped            this file cannot be taken now (the server refuses to let us read
                               it): it stays where it is, is reported, and the next file goes on

A network hiccup is not an exception of ours: the block that meets it retries it under one
`dataflow.ratelimit.RetryPolicy` (the HTTP sink and the OAuth client share it; sftp_read
reconnects), and when retries are used up it raises `ApiDown` or a `FatalError`.

A bad *row* is never an exception: it is a value (`dataflow.rows.RowError`) routed to the error
file. Foreign exceptions (paramiko, gnupg, httpx, pyarrow) are translated at the block boundary
with ``raise OurError(...) from exc``; their messages never carry secrets.
"""

from __future__ import annotations

from dataclasses import dataclass


class DataflowError(Exception):
    """Base of every error the engine raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a dataflow file, located at a YAML path and a line."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


class ConfigError(DataflowError):
    """The dataflow file is invalid. Holds every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class FatalError(DataflowError):
    """Stop the run now; the file being processed stays where it is for the next run."""

    cause = "fatal"  # the run report's machine-readable `stop_cause`


class AuthError(FatalError):
    """Credentials were refused by a server."""

    cause = "auth"


class Stopped(FatalError):
    """A stop was requested (SIGTERM/SIGINT); acknowledged rows are checkpointed."""

    cause = "stopped"


class ApiDown(FatalError):
    """The destination API kept failing: requests exhausted their retries or got no verdict."""

    cause = "api_down"


class StateError(FatalError):
    """The state directory (ledger, checkpoints, locks) cannot be read or written."""

    cause = "state"


class FileRejected(DataflowError):
    """This file cannot be processed (decrypt, parse, header); it goes to error_directory."""


class FileSkipped(DataflowError):
    """This file cannot be taken now (unreadable on the server); it stays where it is."""
