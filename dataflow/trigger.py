"""When a dataflow runs, in an IANA timezone (default UTC). Exactly one of:

- ``cron: "0 6 * * MON"``: a 5-field crontab;
- ``every: {minutes: 15}`` or ``every: {hours: 6}``: a fixed interval;
- ``daily: "06:00"``: every day at a time (Connect+'s "daily" preset);
- ``weekly: {day: MON, at: "06:00"}``: one day a week at a time (``day`` may be a list).

The presets compile to the same cron triggers.
"""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
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

    @model_validator(mode="after")
    def _one(self) -> Every:
        given = [v for v in (self.minutes, self.hours) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of minutes or hours")
        if given[0] < 1:
            raise ValueError("the interval must be at least 1")
        return self


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


class TriggerConfig(BaseModel):
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
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"invalid crontab {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one(self) -> TriggerConfig:
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

    def build(self) -> Any:
        """The APScheduler trigger for this config."""
        tz = ZoneInfo(self.timezone)
        if self.crontab is not None:
            return CronTrigger.from_crontab(self.crontab, timezone=tz)
        assert self.every is not None
        return IntervalTrigger(
            minutes=self.every.minutes or 0, hours=self.every.hours or 0, timezone=tz
        )
