"""schedule: run the dataflow by itself, on a crontab or a preset, in a timezone.

Example::

    - name: trigger
      type: schedule
      cron: "0 6 * * MON"          # or every: {minutes: 15} | {hours: 6} | {days: 7},
                                   # daily: "06:00", weekly: {day: MON, at: "06:00"}
      timezone: Asia/Kolkata       # IANA name; default UTC

At most one trigger per dataflow; a dataflow without one runs only on demand
(`dataflow run`). ``daily`` and ``weekly`` (``day`` may be a list) compile to crontabs. A
cron form that names a wall-clock time repeated on a DST fall-back day runs once; a time
skipped by a spring-forward day is not run that day. ``every`` counts from the scheduler's
start, then from each fire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from dataflow.block import BlockConfig, Trigger
from dataflow.trigger import When


class ScheduleConfig(BlockConfig, When):
    type: Literal["schedule"] = "schedule"


class Schedule(Trigger):
    Config = ScheduleConfig
    config: ScheduleConfig

    def next_fire(self, previous: datetime | None, now: datetime) -> datetime | None:
        return self.config.next_fire(previous, now)

    def fire_key(self, when: datetime) -> str | None:
        return self.config.fire_key(when)

    def describe(self) -> str:
        return self.config.describe()
