#!/usr/bin/env bash
# Sets everything up, then runs the main dataflow once on the embedded sandbox: a local
# OpenSSH SFTP server, the Capillary API emulator, a fresh PGP key pair and an encrypted
# sample vendor file with a few bad rows. Prints the run summary and what landed where.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf sandbox
exec .venv/bin/python -m dataflow.sandbox demo --workdir sandbox
