"""Local faults end to end: a state directory read-only or full, a temp directory too small
(real tmpfs mounts, as root: root ignores mode bits, so read-only is a read-only mount)."""

from __future__ import annotations

import os

import pytest

from dataflow.sandbox import sample_csv

from .conftest import Bed
from .faultkit import fill, remount_ro, tmpfs

NAME = "badges_2026-11-16.csv.gpg"


def assert_nothing_done(bed: Bed) -> None:
    assert bed.sftp.files("inbox") == [NAME]
    assert bed.sftp.files("processed") == [] and bed.sftp.files("errors") == []
    assert bed.api.requests() == []


@pytest.mark.parametrize("existing", [False, True], ids=["empty", "with-ledger"])
def test_read_only_state_directory_says_where_and_loses_nothing(bed: Bed, existing: bool) -> None:
    state = bed.dir / "state"
    config = bed.config()
    with tmpfs(state, "8m"):
        if existing:
            assert bed.run_json(config)[0] == 0  # no files yet: creates the ledger
        remount_ro(state)
        bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
        code, report, stderr = bed.run_json(config)
        assert code == 1, stderr
        assert report["reason"].startswith(
            f"the state directory {state} (DATAFLOW_STATE_DIR) cannot be used: "
        )
        assert "set DATAFLOW_STATE_DIR to a directory that is" in report["reason"]
        assert "Traceback" not in stderr and "sqlite3" not in stderr
        assert_nothing_done(bed)
        history = bed.run("runs")
        assert history.returncode in (0, 1) and "Traceback" not in history.stderr


def test_full_state_directory_says_where_and_loses_nothing(bed: Bed) -> None:
    state = bed.dir / "state"
    config = bed.config()
    with tmpfs(state, "2m"):
        assert bed.run_json(config)[0] == 0  # the ledger exists
        fill(state)
        bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
        code, report, stderr = bed.run_json(config)
        assert code == 1, stderr
        assert (
            f"the state directory {state} (DATAFLOW_STATE_DIR) cannot be used" in (report["reason"])
        )
        assert "Traceback" not in stderr and "sqlite3" not in stderr
        assert_nothing_done(bed)
    code, report, stderr = bed.run_json(config)  # space again (a new state dir): all done
    assert code == 3, stderr


def test_temp_directory_too_small_for_the_download_keeps_the_file(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", os.urandom(3 << 20))
    with tmpfs(bed.dir / "tmp", "1m") as tmp:
        result = bed.run("run", str(bed.config()), "--json", env={"TMPDIR": str(tmp)})
        assert list(tmp.iterdir()) == []  # the partial download was removed
    assert result.returncode == 1, result.stderr
    assert "local disk full at " + str(tmp) in result.stdout
    assert "the file is kept for the next run" in result.stdout
    assert "left in place" not in result.stdout  # said once, not twice
    assert "SFTP download" not in result.stdout and "Traceback" not in result.stderr
    assert_nothing_done(bed)
