"""A third-party block installed as a user would (pip, entry point) runs like a built-in."""

from __future__ import annotations

import gzip
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataflow.testing import check_block

from .conftest import Bed

PLUGIN = Path(__file__).resolve().parent / "plugins" / "dataflow_gunzip"
ROWS = b"".join(b"BADGE-GOLD,%d,16/11/2026 09:30,1798761600\n" % (6001 + i) for i in range(12))
CSV = b"badge_id,customer_id,event_date,expires_at\n" + ROWS


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed with pip into a directory of its own."""
    site = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", "--target", str(site), str(PLUGIN)],
        check=True,
        capture_output=True,
    )
    assert (site / "dataflow_gunzip-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def with_gunzip(bed: Bed, **settings: Any) -> Path:
    path = bed.config(source={"filename_pattern": r"badges_.*\.csv\.gz\.gpg"})
    doc = yaml.safe_load(path.read_text())
    doc["blocks"].insert(2, {"name": "gunzip", "type": "gunzip", **settings})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_plugin_validates_and_runs_end_to_end(bed: Bed, plugin_site: Path) -> None:
    env = {"PYTHONPATH": str(plugin_site)}
    flow = with_gunzip(bed)
    ok = bed.run("validate", str(flow), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "6 blocks" in ok.stdout  # source, decrypt, gunzip, transform, destination, trigger

    schema = json.loads(bed.run("schema", env=env).stdout)  # documented like a built-in
    gunzip = schema["$defs"]["GunzipConfig"]
    assert gunzip["properties"]["max_ratio"]["description"] == "largest allowed expansion factor"
    assert {"$ref": "#/$defs/GunzipConfig"} in schema["properties"]["blocks"]["items"]["oneOf"]
    docs = bed.run("schema", "--docs", env=env).stdout
    assert "## gunzip" in docs and "`dataflow_gunzip` (plugin)" in docs

    unknown = bed.run("validate", str(flow))  # not installed: an unknown block type
    assert unknown.returncode == 2
    assert "blocks[2].type: unknown block type 'gunzip'" in unknown.stdout + unknown.stderr

    bad = with_gunzip(bed, max_ratio=0)
    invalid = bed.run("validate", str(bad), env=env)
    assert invalid.returncode == 2
    assert "blocks[2].max_ratio: Input should be greater than or equal to 1" in (
        invalid.stdout + invalid.stderr
    )

    flow = with_gunzip(bed)
    bed.sftp.put("inbox/badges_1.csv.gz.gpg", bed.keys.encrypt(gzip.compress(CSV)))
    bed.sftp.put("inbox/badges_2.csv.gz.gpg", bed.keys.encrypt(b"not gzip at all"))
    result = bed.run("run", str(flow), "--json", env=env)
    assert result.returncode == 1, result.stderr  # a file-level failure fails the run
    files = {f["name"]: f for f in yaml.safe_load(result.stdout)["files"]}
    assert files["badges_1.csv.gz.gpg"]["status"] == "success"
    assert files["badges_1.csv.gz.gpg"]["rows_succeeded"] == 12
    assert files["badges_2.csv.gz.gpg"]["status"] == "failure"
    assert "not a valid gzip file" in files["badges_2.csv.gz.gpg"]["reason"]
    assert sorted(r["customerId"] for r in bed.api.received()) == [6001 + i for i in range(12)]
    assert bed.sftp.files("processed") == ["badges_1.csv.gz.gpg"]
    assert "badges_2.csv.gz.gpg" in bed.sftp.files("errors")


def test_plugin_passes_the_conformance_suite(
    plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(plugin_site))
    module = importlib.import_module("dataflow_gunzip")
    check_block(module.Gunzip, tmp_path)
