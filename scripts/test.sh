#!/usr/bin/env bash
# Sets everything up, then lints, type-checks and runs the whole test suite (real sshd, real
# gpg, the API emulator over TCP). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check dataflow blocks tests bench
.venv/bin/ruff format --check dataflow blocks tests bench
.venv/bin/mypy dataflow blocks
exec .venv/bin/python -m pytest -q "$@"
