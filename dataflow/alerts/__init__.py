"""Alerts (contract §7): tell someone when a run fails, goes partial, finds the API down,
recovers, or when no file arrived by its deadline.

- `model`: the ``alerts:`` configuration (and the shared ``defaults.yaml``);
- `events`: which alerts a run report (or a passed deadline) raises, with their facts;
- `channels`: webhook and e-mail delivery, retried, logged and counted.

`alert_run` is called by the runner once a run is over; `check_no_file` by the scheduler at
each ``expect_file`` deadline. Neither ever raises: an alert that cannot be delivered is
logged and counted (`delivery_failures_total`), and the run's outcome stays what it was.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dataflow.alerts.channels import (
    deliver,
    deliveries,
    delivery_failures,
    delivery_failures_total,
)
from dataflow.alerts.events import (
    Alert,
    latest_deadline,
    no_file_alert,
    previous_deadline,
    run_alerts,
    utc_iso,
)
from dataflow.alerts.model import (
    DEFAULTS_FILES,
    AlertsConfig,
    DefaultsModel,
    EmailChannel,
    WebhookChannel,
    find_defaults,
    is_defaults_file,
    merge,
)
from dataflow.errors import StateError
from dataflow.report import IN_PROGRESS, RunReport

if TYPE_CHECKING:
    from dataflow.config import Dataflow
    from dataflow.ledger import Ledger

__all__ = [
    "DEFAULTS_FILES",
    "Alert",
    "AlertsConfig",
    "DefaultsModel",
    "EmailChannel",
    "WebhookChannel",
    "alert_run",
    "check_no_file",
    "deliveries",
    "delivery_failures",
    "delivery_failures_total",
    "find_defaults",
    "is_defaults_file",
    "merge",
    "run_alerts",
]

log = logging.getLogger(__name__)


def alert_run(dataflow: Dataflow, report: RunReport, ledger: Ledger) -> None:
    """Send the alerts a finished run raises. Never raises."""
    config = dataflow.model.alerts
    if config is None or not config.channels or report.dry_run or report.skipped:
        return
    if report.status == IN_PROGRESS:  # sent in shards: the last one alerts (dataflow.shards)
        return
    try:
        previous = None
        if "recovered" in config.events:
            try:
                previous = ledger.previous_outcome(report.dataflow, report.run_id)
            except StateError as exc:
                log.warning("%s: cannot tell whether it recovered: %s", report.dataflow, exc)
        for alert in run_alerts(config, report, previous):
            deliver(alert, config.channels)
    except Exception as exc:  # alerts never cost a run its outcome
        log.error("%s: alerts not sent: %s: %s", report.dataflow, type(exc).__name__, exc)
        log.debug("alerts", exc_info=True)


def check_no_file(dataflow: Dataflow, ledger: Ledger, now: datetime | None = None) -> bool:
    """At an ``expect_file`` deadline: alert when nothing was picked up since the previous
    deadline. True when a ``no_file`` alert was raised."""
    config = dataflow.model.alerts
    if config is None or config.expect_file is None or "no_file" not in config.events:
        return False
    when = config.expect_file
    now = now or datetime.now(UTC)
    deadline = latest_deadline(when, now)
    since = previous_deadline(when, deadline) if deadline is not None else None
    if deadline is None or since is None:
        return False
    key = when.fire_key(deadline)
    if key is not None and not ledger.claim_fire(f"{dataflow.name}:no_file", key):
        return False  # this deadline was checked already (a DST fall-back repeat, a restart)
    picked_up = ledger.files_since(dataflow.name, utc_iso(since))
    alert = no_file_alert(dataflow.name, when, deadline, since, picked_up)
    if alert is None:
        log.info(
            "%s: %d file(s) picked up since the previous deadline (%s); no no_file alert",
            dataflow.name,
            picked_up,
            utc_iso(since),
        )
        return False
    log.warning("%s", alert.message)
    if config.channels:
        deliver(alert, config.channels)
    return True
