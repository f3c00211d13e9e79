"""The forms of "when", in an IANA timezone (default UTC), shared by the `schedule` trigger block
and the alerts' ``expect_file`` deadline. Exactly one of:

- ``cron: "0 6 * * MON"``: a 5-field crontab;
- ``every: {minutes: 15}``, ``{hours: 6}`` or ``{days: 7}``: a fixed interval;
- ``daily: "06:00"``: every day at a time (Connect+'s "daily" preset);
- ``weekly: {day: MON, at: "06:00"}``: one day a week at a time (``day`` may be a list).

The presets compile to the same cron expressions. `When.next_fire` is the engine's own
"next fire" rule (no APScheduler type crosses it); APScheduler is only used inside it to
evaluate a crontab, and is imported when first needed.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r} (e.g. Asia/Kolkata, UTC)") from None
    return value


Timezone = Annotated[str, AfterValidator(check_timezone)]


class Every(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    minutes: int | None = None
    hours: int | None = None
    days: int | None = None

    @model_validator(mode="after")
    def _one(self) -> Every:
        given = [v for v in (self.minutes, self.hours, self.days) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of minutes, hours or days")
        if given[0] < 1:
            raise ValueError("the interval must be at least 1")
        return self

    @property
    def interval(self) -> timedelta:
        return timedelta(minutes=self.minutes or 0, hours=self.hours or 0, days=self.days or 0)


DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def check_time(value: str) -> str:
    parts = value.split(":")
    ok = len(parts) == 2 and all(p.isdigit() for p in parts)
    if not ok or not (0 <= int(parts[0]) <= 23 and 0 <= int(parts[1]) <= 59):
        raise ValueError(f"{value!r} is not a time of day like '06:00'")
    return f"{int(parts[0]):02d}:{int(parts[1]):02d}"


TimeOfDay = Annotated[str, AfterValidator(check_time)]


class Weekly(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    day: str | list[str]
    at: TimeOfDay

    @field_validator("day")
    @classmethod
    def _days(cls, value: str | list[str]) -> str | list[str]:
        for day in [value] if isinstance(value, str) else value:
            if day.upper() not in DAYS:
                raise ValueError(f"{day!r} is not a day ({', '.join(DAYS)})")
        return value


@functools.lru_cache(maxsize=256)
def _cron_trigger(crontab: str, timezone: str | None = None) -> Any:
    """One parsed crontab per expression and zone (validation and every fire reuse it)."""
    from apscheduler.triggers.cron import CronTrigger

    tz = ZoneInfo(timezone) if timezone else None
    return CronTrigger.from_crontab(crontab, timezone=tz)


class When(BaseModel):
    """One of cron, every, daily or weekly, in a timezone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = None
    every: Every | None = None
    daily: TimeOfDay | None = None
    weekly: Weekly | None = None
    timezone: Timezone = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value.split()) != 5:
            raise ValueError(
                f"{value!r} is not a 5-field crontab (minute hour day month day-of-week)"
            )
        try:
            _cron_trigger(value)
        except ValueError as exc:
            raise ValueError(f"invalid crontab {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one(self) -> When:
        given = [k for k in ("cron", "every", "daily", "weekly") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cron, every, daily or weekly")
        return self

    @property
    def crontab(self) -> str | None:
        """The 5-field crontab this trigger means (None for `every`)."""
        if self.cron is not None:
            return self.cron
        if self.daily is not None:
            hour, minute = self.daily.split(":")
            return f"{int(minute)} {int(hour)} * * *"
        if self.weekly is not None:
            hour, minute = self.weekly.at.split(":")
            days = [self.weekly.day] if isinstance(self.weekly.day, str) else self.weekly.day
            return f"{int(minute)} {int(hour)} * * {','.join(d.upper() for d in days)}"
        return None

    def next_fire(self, previous: datetime | None, now: datetime) -> datetime:
        """The next fire time: after `previous` (the last fire, None at first), else after now.

        Missed fires (the process was down) come back as times before `now`: the scheduler
        coalesces them into one catch-up run.
        """
        if self.every is not None:
            return (previous or now) + self.every.interval
        assert self.crontab is not None
        trigger = _cron_trigger(self.crontab, self.timezone)
        fire: datetime = trigger.get_next_fire_time(previous, now)
        return fire

    def fire_key(self, when: datetime) -> str | None:
        """Fires with the same key run once: the wall-clock minute of a cron form (so both
        02:30 of a DST fall-back day run once); None for `every`."""
        if self.crontab is None:
            return None
        return when.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m-%d %H:%M")

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every.interval}"
        return f"cron[{self.crontab}] {self.timezone}"


TriggerConfig = When  # the earlier name
