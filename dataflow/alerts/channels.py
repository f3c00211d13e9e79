"""Delivering an alert: a webhook (JSON or Slack) or an e-mail over SMTP, retried.

Channels are served at the same time, each in its own thread, and each gets `ATTEMPTS`
tries with a growing pause between them (`PAUSES`); an answer that will not change (HTTP 4xx
other than 408/425/429, a refused SMTP login or address, a certificate that does not verify)
ends the tries at once. Every try is bounded by the channel's ``timeout_seconds``, so a
delivery takes at most about ``ATTEMPTS * timeout_seconds + sum(PAUSES)`` (33 s by default).
A delivery that fails is logged and counted (`delivery_failures_total`); it never raises, so
it cannot change a run's outcome.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import orjson

from dataflow.alerts.events import Alert
from dataflow.alerts.model import Channel, EmailChannel, WebhookChannel
from dataflow.redact import redact

log = logging.getLogger(__name__)

ATTEMPTS = 3
PAUSES = (1.0, 2.0)  # seconds before the 2nd and 3rd attempts

_lock = threading.Lock()
_failures: Counter[tuple[str, str]] = Counter()  # (dataflow, channel type) -> failed deliveries
_sent: Counter[tuple[str, str]] = Counter()  # (dataflow, channel type) -> delivered alerts


def delivery_failures_total() -> int:
    """Alerts that could not be delivered since the process started (all channels)."""
    with _lock:
        return sum(_failures.values())


def delivery_failures() -> dict[tuple[str, str], int]:
    """Failed deliveries by (dataflow, channel type), for the metrics endpoint."""
    with _lock:
        return dict(_failures)


def deliveries() -> dict[tuple[str, str], int]:
    """Delivered alerts by (dataflow, channel type), for the metrics endpoint."""
    with _lock:
        return dict(_sent)


class DeliveryError(Exception):
    """One try failed; `final` when trying again cannot help."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def deliver(alert: Alert, channels: list[Channel]) -> int:
    """Send `alert` on every channel at once; how many channels took it. Never raises."""
    if not channels:
        return 0
    with ThreadPoolExecutor(len(channels), thread_name_prefix="alert") as pool:
        return sum(pool.map(lambda channel: _deliver_one(alert, channel), channels))


def _deliver_one(alert: Alert, channel: Channel) -> bool:
    key = (alert.dataflow, channel.type)
    try:
        attempts = _with_retries(alert, channel)
    except Exception as exc:  # DeliveryError, or a bug here: neither may cost the run anything
        with _lock:
            _failures[key] += 1
        with contextlib.suppress(Exception):  # counting must not cost the run anything either
            from dataflow import metrics  # lazily: prometheus-client only when an alert fails

            metrics.alert_delivery_failed(alert.dataflow, channel.type)
        why = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "%s: the %s alert could not be delivered (%s): %s; the run's outcome is unchanged",
            alert.dataflow,
            alert.event,
            channel.describe(),
            redact(why),
        )
        log.debug("alert delivery", exc_info=not isinstance(exc, DeliveryError))
        return False
    with _lock:
        _sent[key] += 1
    log.info(
        "%s: %s alert sent (%s, attempt %d)",
        alert.dataflow,
        alert.event,
        channel.describe(),
        attempts,
    )
    return True


def _with_retries(alert: Alert, channel: Channel) -> int:
    last: DeliveryError | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if isinstance(channel, WebhookChannel):
                send_webhook(alert, channel)
            else:
                send_email(alert, channel)
            return attempt
        except DeliveryError as exc:
            last = exc
            if exc.final or attempt == ATTEMPTS:
                break
            log.warning(
                "%s: %s: attempt %d failed (%s); trying again",
                alert.dataflow,
                channel.describe(),
                attempt,
                redact(str(exc)),
            )
            time.sleep(PAUSES[min(attempt, len(PAUSES)) - 1])
    assert last is not None
    tries = "1 attempt" if last.final else f"{ATTEMPTS} attempts"
    raise DeliveryError(f"{last} (after {tries})")


# -- webhook --------------------------------------------------------------------------------


def webhook_payload(alert: Alert, channel: WebhookChannel) -> bytes:
    if channel.format == "slack":
        return orjson.dumps({"text": redact(render_text(alert, slack=True))})
    return orjson.dumps(alert.body())


def send_webhook(alert: Alert, channel: WebhookChannel) -> None:
    import httpx  # when an alert is sent: loading a dataflow file stays light

    try:
        response = httpx.post(
            channel.url.get_secret_value(),
            content=webhook_payload(alert, channel),
            headers={"Content-Type": "application/json", "User-Agent": "dataflow-alerts"},
            timeout=channel.timeout_seconds,
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    status = response.status_code
    if 200 <= status < 300:
        return
    retry = status in (408, 425, 429) or status >= 500
    raise DeliveryError(f"the receiver answered HTTP {status}", final=not retry)


# -- email ----------------------------------------------------------------------------------


def email_message(alert: Alert, channel: EmailChannel) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = redact(f"[dataflow] {alert.event}: {alert.dataflow}")
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=channel.sender.rsplit("@", 1)[-1])
    message.set_content(redact(render_text(alert)))
    return message


def send_email(alert: Alert, channel: EmailChannel) -> None:
    message = email_message(alert, channel)
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout_seconds) as smtp:
            smtp.ehlo()
            if channel.starttls:
                smtp.starttls(context=_tls_context(channel))
                smtp.ehlo()
            if channel.username:
                password = channel.password.get_secret_value() if channel.password else ""
                smtp.login(channel.username, password)
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"the SMTP server refused the login (SMTP {exc.smtp_code}); check username and "
            "password",
            final=True,
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"the SMTP server does not support it: {exc}", final=True) from exc
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
        raise DeliveryError(f"the SMTP server refused an address: {exc}", final=True) from exc
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(
            f"the SMTP server's certificate does not verify ({exc.verify_message}); set "
            "ca_bundle to the CA that signed it",
            final=True,
        ) from exc
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(
            f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}", final=exc.smtp_code >= 500
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc


def _tls_context(channel: EmailChannel) -> ssl.SSLContext:
    if channel.ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(channel.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(
            f"cannot read ca_bundle {channel.ca_bundle}: {exc}", final=True
        ) from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- the text of an e-mail or a Slack message -----------------------------------------------


def render_text(alert: Alert, *, slack: bool = False) -> str:
    """The alert's facts as plain text (Slack: with a bold first line)."""
    head = f"*[{alert.event}] {alert.dataflow}*" if slack else f"{alert.message}"
    lines = [head]
    if slack:
        lines.append(alert.message)
    lines += [
        "",
        f"event:    {alert.event}",
        f"dataflow: {alert.dataflow}",
        f"run_id:   {alert.run_id or '-'}",
        f"at:       {alert.at}",
    ]
    if alert.reason:
        lines.append(f"reason:   {alert.reason}")
    if alert.files:
        lines += ["", "files:"]
        lines += [_file_line(f) for f in alert.files]
    return "\n".join(lines) + "\n"


def _file_line(f: dict[str, object]) -> str:
    line = (
        f"  {f['name']}: {f['status']}; {f['rows_total']} rows: {f['rows_succeeded']} "
        f"accepted, {f['rows_rejected']} rejected, {f['rows_failed']} failed"
    )
    extra = [f"error file {f['error_file']}"] if f.get("error_file") else []
    if f.get("reason"):
        extra.append(f"reason: {f['reason']}")
    return line + ("".join(f"\n    {e}" for e in extra))
