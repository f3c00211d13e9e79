"""A light core (contract §6): `dataflow validate` loads no network, crypto or dataframe
library; each block imports its libraries when it opens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("paramiko", "gnupg", "httpx", "pyarrow", "pandas", "numpy", "cryptography", "duckdb")
PROBE = """
import json, sys
from dataflow.cli import main
code = main(["validate", *sys.argv[1:]])
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
blocks = sorted(m for m in sys.modules if m.startswith("dataflow_blocks."))
print(json.dumps({"code": code, "loaded": loaded, "blocks": blocks}))
"""


def test_validate_loads_no_network_crypto_or_dataframe_library() -> None:
    configs = sorted(
        str(p) for p in (ROOT / "configs").rglob("*.yaml") if p.name != "defaults.yaml"
    )
    assert len(configs) >= 4
    env = {"ACME_SFTP_PASSWORD": "x" * 8, "ACME_PGP_PASSPHRASE": "x" * 8}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("HEAVY", repr(json.dumps(HEAVY))), *configs],
        capture_output=True,
        text=True,
        check=False,
        env={**env, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["loaded"] == [], outcome
    for name in ("sftp_read", "pgp_decrypt", "field_mapping", "http_write", "schedule"):
        assert f"dataflow_blocks.{name}" in outcome["blocks"]  # every block was validated
    assert outcome["code"] in (0, 2), result.stdout  # valid or not, it stayed light
