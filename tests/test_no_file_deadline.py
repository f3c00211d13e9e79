"""The ``no_file`` alert in real time: `dataflow schedule` runs with an ``expect_file``
deadline set a minute ahead (a cron in Asia/Kolkata, shared through a ``defaults.yaml``);
the dataflow that got no file alerts at the deadline, the one that processed a file does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from dataflow.sandbox import sample_csv

from . import alertkit
from .alertkit import ALERT_ENV, Receiver
from .conftest import Bed, wait_until

receiver = alertkit.receiver  # fixture

ZONE = ZoneInfo("Asia/Kolkata")


class Scheduler:
    def __init__(self, bed: Bed, directory: Path) -> None:
        self.log = bed.dir / "schedule.log"
        self.fh = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dataflow", "schedule", str(directory)],
            env={**os.environ, **bed.env, **ALERT_ENV},
            stdout=subprocess.DEVNULL,
            stderr=self.fh,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.text()}"
            time.sleep(0.2)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.fh.close()
        return code


def next_deadline(lead: float = 30) -> datetime:
    """The start of a local minute at least `lead` seconds from now."""
    soon = datetime.now(ZONE) + timedelta(seconds=lead)
    return soon.replace(second=0, microsecond=0) + timedelta(minutes=1)


def test_no_file_by_the_deadline_alerts_and_a_picked_up_file_does_not(
    bed: Bed, receiver: Receiver
) -> None:
    flows = bed.dir / "flows"
    flows.mkdir()
    deadline = next_deadline()
    alerts: dict[str, Any] = {
        "expect_file": {"cron": f"{deadline.minute} {deadline.hour} * * *", "timezone": str(ZONE)},
        "channels": [{"type": "webhook", "url": receiver.url}],
    }
    (flows / "defaults.yaml").write_text(yaml.safe_dump({"alerts": alerts}))
    bed.config(name="flow-one", file="flows/one.yaml")
    two = bed.config(name="flow-two", file="flows/two.yaml")

    sched = Scheduler(bed, flows)
    try:
        sched.wait_for("flow-two:no_file: next run at", timeout=30)
        assert "defaults" not in sched.text()  # the defaults file is not taken for a dataflow
        bed.sftp.put("inbox/badges_on_time.csv.gpg", bed.keys.encrypt(sample_csv()))
        result = bed.run("run", str(two), env=ALERT_ENV)
        assert result.returncode == 3, result.stderr  # processed (partial: the sample's rows)
        assert datetime.now(ZONE) < deadline, "the run took too long for this test's deadline"
        assert receiver.posts == []

        wait_until(lambda: receiver.posts, timeout=(deadline - datetime.now(ZONE)).seconds + 30)
        arrived = datetime.now(ZONE)
        (post,) = receiver.posts
        body = post["json"]
        assert deadline <= arrived < deadline + timedelta(seconds=60)
        assert body["event"] == "no_file" and body["dataflow"] == "flow-one"
        assert body["run_id"] is None and body["files"] == []
        local = deadline.strftime("%Y-%m-%d %H:%M IST")
        assert f"and the deadline {local}" in body["message"]
        assert datetime.fromisoformat(body["at"]) >= deadline
        sched.wait_for("flow-two: 1 file(s) picked up since the previous deadline", timeout=30)
        time.sleep(1)
        assert len(receiver.posts) == 1  # flow-two picked up its file in time: no alert
    finally:
        code = sched.stop()
    assert code == 0, sched.text()
    assert "Traceback" not in sched.text()
