"""Triggers, presets, the DST guard, and `dataflow schedule` as a real process."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from dataflow.ledger import Ledger
from dataflow.trigger import TriggerConfig
from dataflow_blocks.schedule import Schedule, ScheduleConfig

from .conftest import Bed, wait_until


def test_presets_compile_to_cron() -> None:
    assert TriggerConfig(daily="6:00").crontab == "0 6 * * *"
    weekly = TriggerConfig(weekly={"day": ["mon", "THU"], "at": "07:45"}, timezone="Asia/Kolkata")
    assert weekly.crontab == "45 7 * * MON,THU"
    fire = weekly.next_fire(None, datetime(2026, 11, 22, tzinfo=UTC))
    assert fire == datetime(2026, 11, 23, 7, 45, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert weekly.next_fire(fire, fire) == fire + timedelta(days=3)  # MON then THU
    assert TriggerConfig(every={"minutes": 15}).crontab is None
    weekly_every = TriggerConfig(every={"days": 7})
    start = datetime(2026, 11, 22, 6, tzinfo=UTC)
    assert weekly_every.next_fire(None, start) == start + timedelta(days=7)
    assert weekly_every.next_fire(start, start + timedelta(hours=1)) == start + timedelta(days=7)
    with pytest.raises(ValidationError, match="'25:00' is not a time of day"):
        TriggerConfig(daily="25:00")
    with pytest.raises(ValidationError, match="give exactly one of cron, every, daily or weekly"):
        TriggerConfig(cron="0 6 * * *", daily="06:00")
    with pytest.raises(ValidationError, match="'FUNDAY' is not a day"):
        TriggerConfig(weekly={"day": "FUNDAY", "at": "06:00"})


def test_dst_fall_back_runs_once(tmp_path: Path) -> None:
    tz = "Europe/Berlin"
    trigger = Schedule(ScheduleConfig(name="trigger", cron="30 2 * * *", timezone=tz))
    first = trigger.next_fire(None, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first is not None
    second = trigger.next_fire(first, first)
    assert second is not None
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)  # twice
    ledger = Ledger(tmp_path)
    try:
        keys = [trigger.fire_key(f) for f in (first, second)]
        assert keys == ["2026-10-25 02:30", "2026-10-25 02:30"]
        claims = [ledger.claim_fire("flow", str(k)) for k in keys]
        assert claims == [True, False]
        third = trigger.next_fire(second, second)
        assert third is not None
        assert ledger.claim_fire("flow", str(trigger.fire_key(third)))  # the next day runs
    finally:
        ledger.close()


class Scheduler:
    """`dataflow schedule` in a subprocess, its log in a file."""

    def __init__(self, bed: Bed, directory: Path) -> None:
        self.log = bed.dir / f"schedule-{time.monotonic_ns()}.log"
        self.fh = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dataflow", "schedule", str(directory)],
            env={**os.environ, **bed.env},
            stdout=subprocess.DEVNULL,
            stderr=self.fh,
        )

    def wait_for(self, text: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text().count(text) >= count:
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.fh.close()
        return code


def start_with_one_flow(bed: Bed) -> tuple[Path, Scheduler]:
    flows = bed.dir / "flows"
    flows.mkdir()
    bed.config(name="flow-one", file="flows/one.yaml")
    sched = Scheduler(bed, flows)
    sched.wait_for("flow-one: next run at")
    return flows, sched


def test_schedule_reload_stop_restart_and_catch_up(bed: Bed) -> None:
    flows, sched = start_with_one_flow(bed)

    bed.config(name="flow-two", file="flows/two.yaml")
    (flows / "broken.yaml").write_text("version: 1\nname: broken\n")
    sched.proc.send_signal(signal.SIGHUP)
    sched.wait_for("flow-two: next run at")
    sched.wait_for("broken.yaml: invalid")
    (flows / "two.yaml").rename(flows / "two.yaml.off")
    sched.proc.send_signal(signal.SIGHUP)
    sched.wait_for("flow-two: unscheduled")
    (flows / "two.yaml.off").rename(flows / "two.yaml")
    sched.proc.send_signal(signal.SIGHUP)
    sched.wait_for("flow-two: scheduled", count=2)
    sched.wait_for("flow-two: next run at", count=2)
    assert sched.stop() == 0
    assert "scheduler stopped" in sched.log.read_text()

    store = bed.dir / "state" / "schedule.db"
    with sqlite3.connect(store) as db:
        assert sorted(r[0] for r in db.execute("SELECT id FROM apscheduler_jobs")) == [
            "flow-one",
            "flow-two",
        ]

    make_due(store, "flow-one")  # as if the scheduler was down over its fire time
    (flows / "broken.yaml").unlink()
    bed.sftp.put(
        "inbox/badges_sched.csv.gpg",
        bed.keys.encrypt(
            b"badge_id,customer_id,event_date,expires_at\n"
            b"BADGE-GOLD,7001,16/11/2026 09:30,1798761600\n"
        ),
    )
    sched = Scheduler(bed, flows)
    sched.wait_for("flow-one: run ")  # the missed run, caught up once at start
    assert sched.stop() == 0
    assert bed.sftp.files("processed") == ["badges_sched.csv.gpg"]
    assert [r["customerId"] for r in bed.api.received()] == [7001]
    runs = bed.run("runs", "flow-one", "--json")
    assert runs.stdout.count('"run_id"') == 1
    with sqlite3.connect(store) as db:  # no duplicate jobs after restarts
        assert db.execute("SELECT COUNT(*) FROM apscheduler_jobs").fetchone()[0] == 2


def make_due(store: Path, job_id: str) -> None:
    """Move a stored job's next run time an hour into the past."""
    with sqlite3.connect(store) as db:
        (state,) = db.execute(
            "SELECT job_state FROM apscheduler_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        job = pickle.loads(state)
        past = datetime.now(UTC) - timedelta(hours=1)
        job["next_run_time"] = past
        db.execute(
            "UPDATE apscheduler_jobs SET job_state = ?, next_run_time = ? WHERE id = ?",
            (pickle.dumps(job), past.timestamp(), job_id),
        )


def test_sigterm_during_a_run_checkpoints_and_exits_0(bed: Bed) -> None:
    flows, sched = start_with_one_flow(bed)
    assert sched.stop() == 0
    make_due(bed.dir / "state" / "schedule.db", "flow-one")
    rows = "".join(f"BADGE-GOLD,{8001 + i},16/11/2026 09:30,1798761600\n" for i in range(30))
    bed.sftp.put(
        "inbox/badges_long.csv.gpg",
        bed.keys.encrypt(("badge_id,customer_id,event_date,expires_at\n" + rows).encode()),
    )
    bed.api.configure(latency_ms=300)
    sched = Scheduler(bed, flows)
    wait_until(lambda: len(bed.api.requests()) >= 2)
    assert sched.stop() == 0  # in-flight requests finished, the rest checkpointed
    assert "stopped before the file was finished" in sched.log.read_text()
    assert bed.sftp.files("inbox") == ["badges_long.csv.gpg"]
    sent = len(bed.api.received())
    assert 0 < sent < 30
    bed.api.configure(latency_ms=0)
    code, report, stderr = bed.run_json(bed.dir / "flows" / "one.yaml")
    assert code == 0, stderr
    assert report["files"][0]["rows_succeeded"] == 30
    assert sorted(r["customerId"] for r in bed.api.received()) == [8001 + i for i in range(30)]


def test_a_second_scheduler_on_the_same_state_refuses(bed: Bed) -> None:
    flows, sched = start_with_one_flow(bed)
    other = bed.run("schedule", str(flows), timeout=60)
    assert other.returncode == 1
    assert "another dataflow scheduler is running" in other.stderr
    assert sched.stop() == 0
