"""When a dataflow runs: a 5-field crontab or a fixed interval, in an IANA timezone."""

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


class TriggerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = None
    every: Every | None = None
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
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron or every")
        return self

    def build(self) -> Any:
        """The APScheduler trigger for this config."""
        tz = ZoneInfo(self.timezone)
        if self.cron is not None:
            return CronTrigger.from_crontab(self.cron, timezone=tz)
        assert self.every is not None
        return IntervalTrigger(
            minutes=self.every.minutes or 0, hours=self.every.hours or 0, timezone=tz
        )
