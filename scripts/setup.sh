#!/usr/bin/env bash
# Installs what dataflow needs on a fresh Debian machine: OpenSSH server and client and GnuPG
# (for the real-part tests and the sandbox), PostgreSQL and Redis (the scale-out tests), then
# a virtualenv in .venv with the package.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v gpg >/dev/null || need+=(gnupg)
command -v gpgconf >/dev/null || need+=(gnupg)
# the run-history page is tested in a real headless browser (tests/test_web.py)
command -v chromium >/dev/null || need+=(chromium)
# several machines (docs/scale-out.md): the tests start their own PostgreSQL 15 and Redis
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
# the cluster test's worker hosts are network namespaces (ip netns, veth; ss for leftovers)
{ command -v ip && command -v ss; } >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
