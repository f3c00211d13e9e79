"""The ``alerts:`` key of a dataflow file (and of a shared ``defaults.yaml``), per contract §7.

Example::

    alerts:
      events: [failure, partial, no_file, api_down, recovered]  # default: failure, no_file,
                                                                #   api_down
      partial_threshold_percent: 10      # `partial` when rejected + failed >= 10 % of rows_total
      expect_file:                       # `no_file`: nothing picked up by this deadline
        weekly: {day: MON, at: "09:00"}  # cron | daily | weekly | every, as the schedule trigger
        timezone: Asia/Kolkata
      channels:
        - {type: webhook, url: "${ACME_ALERT_URL}"}               # format: slack for Slack
        - {type: email, host: smtp.acme.example, port: 587, starttls: true,
           username: "${SMTP_USER}", password: "${SMTP_PASSWORD}",
           from: dataflow@acme.example, to: [integrations@acme.example]}

Shared defaults: the nearest ``defaults.yaml`` (or ``.yml``) in the dataflow file's folder or
its parent folder holds ``alerts:`` for every dataflow below it; a dataflow's own ``alerts:``
overrides it key by key (``channels`` and ``expect_file`` are replaced whole).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from dataflow.trigger import When

Event = Literal["failure", "partial", "no_file", "api_down", "recovered"]
DEFAULT_EVENTS: tuple[Event, ...] = ("failure", "no_file", "api_down")
DEFAULTS_FILES = ("defaults.yaml", "defaults.yml")


class WebhookChannel(BaseModel):
    """A JSON POST (contract §7 body), or Slack's ``{"text": ...}`` with ``format: slack``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook"]
    url: SecretStr  # a Slack webhook URL is itself a credential
    format: Literal["json", "slack"] = "json"
    timeout_seconds: float = Field(10.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("the webhook url must start with http:// or https://")
        return value

    def describe(self) -> str:
        rest = self.url.get_secret_value().split("://", 1)[1]
        return f"webhook to {rest.split('/', 1)[0].rsplit('@', 1)[-1]}"


class EmailChannel(BaseModel):
    """Plain-text mail over SMTP, with STARTTLS and AUTH when configured."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    ca_bundle: Path | None = None  # a PEM file to trust instead of the system CAs
    timeout_seconds: float = Field(10.0, gt=0, le=60)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if "@" not in address:
                raise ValueError(f"{address!r} is not an e-mail address")
        return value

    def describe(self) -> str:
        return f"email via {self.host}:{self.port}"


Channel = Annotated[WebhookChannel | EmailChannel, Field(discriminator="type")]


class AlertsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[Event] = Field(default_factory=lambda: list(DEFAULT_EVENTS))
    partial_threshold_percent: float = Field(0.0, ge=0, le=100)
    expect_file: When | None = None
    channels: list[Channel] = Field(default_factory=list)


class DefaultsModel(BaseModel):
    """A ``defaults.yaml`` beside the dataflows: for now, shared ``alerts:`` only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alerts: AlertsConfig | None = None


def is_defaults_file(path: Path) -> bool:
    return path.name in DEFAULTS_FILES


def find_defaults(dataflow_file: Path) -> Path | None:
    """The nearest defaults file: in the dataflow file's folder, else in its parent folder."""
    folder = dataflow_file.resolve().parent
    for directory in (folder, folder.parent):
        for name in DEFAULTS_FILES:
            candidate = directory / name
            if candidate.is_file() and candidate != dataflow_file.resolve():
                return candidate
    return None


def merge(defaults: Any, own: Any) -> Any:
    """The dataflow's ``alerts:`` over the defaults' one, key by key (raw YAML values)."""
    if not isinstance(defaults, dict):
        return own
    if own is None:
        return dict(defaults)
    if not isinstance(own, dict):
        return own  # wrong type: let validation report it where it is written
    return {**defaults, **own}
