"""Alerts (contract §7) over real parts: `dataflow run` as a subprocess against sshd, gpg and the
API emulator, alerts received by a real HTTP server and a real SMTP server (STARTTLS, AUTH)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dataflow import alerts
from dataflow.alerts import channels
from dataflow.alerts.events import Alert, run_alerts
from dataflow.config import load_dataflow
from dataflow.errors import ConfigError
from dataflow.redact import register
from dataflow.report import FileReport, RunReport
from dataflow.sandbox import free_port, sample_csv
from dataflow.scheduler import discover

from . import alertkit
from .alertkit import (
    ALERT_ENV,
    ALERT_SECRETS,
    SMTP_PASSWORD,
    WEBHOOK_TOKEN,
    Receiver,
    SmtpServer,
    add_alerts,
)
from .conftest import Bed

receiver, smtp, smtp_server = alertkit.receiver, alertkit.smtp, alertkit.smtp_server  # fixtures

BAD = "badges_broken.csv.gpg"
SAMPLE = "badges_sample.csv.gpg"
FILE_KEYS = {
    "name", "lineage_id", "status", "rows_total", "rows_filtered", "rows_rejected", "rows_sent",
    "rows_succeeded", "rows_failed", "processed_path", "error_file", "reason",
}  # fmt: skip


def run(bed: Bed, config: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = bed.run("run", str(config), "--json", env=ALERT_ENV)
    return result, json.loads(result.stdout) if result.stdout.strip() else {}


def assert_no_secret(bed: Bed, *texts: str) -> None:
    for secret in [*bed.secret_values(), *ALERT_SECRETS]:
        for text in texts:
            assert secret not in text


def both(receiver: Receiver, smtp: SmtpServer, **alerts: Any) -> dict[str, Any]:
    return {"channels": [{"type": "webhook", "url": receiver.url}, smtp.channel()], **alerts}


def test_a_failed_file_alerts_on_both_channels(
    bed: Bed, receiver: Receiver, smtp: SmtpServer
) -> None:
    bed.sftp.put(f"inbox/{BAD}", b"this is not an OpenPGP message\n")
    config = add_alerts(bed.config(), both(receiver, smtp))
    result, report = run(bed, config)
    assert result.returncode == 1, result.stderr
    assert report["status"] == "failure"

    (post,) = receiver.posts
    body = post["json"]
    assert post["content_type"] == "application/json"
    assert set(body) == {"event", "dataflow", "run_id", "at", "message", "files", "reason"}
    assert body["event"] == "failure" and body["dataflow"] == "acme-earned-badges"
    assert body["run_id"] == report["run_id"]
    assert body["files"] == report["files"] and set(body["files"][0]) == FILE_KEYS
    assert body["files"][0]["name"] == BAD and body["files"][0]["status"] == "failure"
    assert body["at"] == report["finished_at"]
    assert BAD in body["message"] and body["reason"] == report["files"][0]["reason"]

    (mail,) = smtp.mails
    assert mail.tls and mail.authenticated  # STARTTLS, then AUTH with the configured login
    assert mail.rcpt_tos == ["integrations@acme.example", "oncall@acme.example"]
    assert mail.message["Subject"] == "[dataflow] failure: acme-earned-badges"
    text = mail.message.get_content()
    for fact in (body["message"], report["run_id"], BAD, "event:    failure", body["at"]):
        assert fact in text
    assert_no_secret(bed, post["raw"], mail.raw, result.stderr)
    assert "failure alert sent (webhook to 127.0.0.1" in result.stderr
    assert "failure alert sent (email via 127.0.0.1" in result.stderr
    print(json.dumps(body, indent=2), mail.raw, sep="\n")  # what an alert looks like (-s)


def test_a_partial_run_above_the_threshold_alerts(bed: Bed, receiver: Receiver) -> None:
    bed.sftp.put(f"inbox/{SAMPLE}", bed.keys.encrypt(sample_csv()))  # 10 rows: 5 + 1 bad
    channel = {"type": "webhook", "url": receiver.url}
    alerts_ = {"events": ["partial"], "partial_threshold_percent": 50, "channels": [channel]}
    result, report = run(bed, add_alerts(bed.config(), alerts_))
    assert result.returncode == 3, result.stderr
    (body,) = receiver.accepted()
    assert body["event"] == "partial" and body["run_id"] == report["run_id"]
    assert "6 of 10 rows (60.0%) were rejected or failed" in body["message"]
    assert report["files"][0]["error_file"] in body["reason"]


def test_slack_format_posts_text(bed: Bed, receiver: Receiver) -> None:
    bed.sftp.put(f"inbox/{BAD}", b"not pgp\n")
    channel = {"type": "webhook", "url": receiver.url, "format": "slack"}
    result, report = run(bed, add_alerts(bed.config(), {"channels": [channel]}))
    assert result.returncode == 1, result.stderr
    (body,) = receiver.accepted()
    assert list(body) == ["text"]
    assert body["text"].startswith("*[failure] acme-earned-badges*\n")
    assert report["run_id"] in body["text"] and BAD in body["text"]


def test_api_down_then_recovered(bed: Bed, receiver: Receiver, smtp: SmtpServer) -> None:
    bed.sftp.put(f"inbox/{SAMPLE}", bed.keys.encrypt(sample_csv()))
    sink = {"batch_size": 1, "concurrency": 1, "max_retries": 0, "max_consecutive_failures": 2}
    events = ["failure", "api_down", "recovered"]
    config = add_alerts(bed.config(sink=sink), both(receiver, smtp, events=events))
    bed.api.configure(error_rate=1.0)  # every request: 503
    result, report = run(bed, config)
    assert result.returncode == 1, result.stderr
    assert "looks down" in report["reason"]
    (down,) = receiver.accepted()
    assert down["event"] == "api_down" and down["run_id"] == report["run_id"]
    assert down["reason"] == report["reason"]
    assert "the API kept failing" in down["message"]
    assert [m.message["Subject"] for m in smtp.mails] == ["[dataflow] api_down: acme-earned-badges"]

    bed.api.configure(error_rate=0.0)  # healed: the kept file goes through
    result, report = run(bed, config)
    assert result.returncode == 3, result.stderr  # partial (the sample's bad rows)
    up = receiver.accepted()[1]
    assert up["event"] == "recovered" and up["run_id"] == report["run_id"]
    assert "looks down" in up["reason"]  # the previous run's reason
    assert len(receiver.accepted()) == 2 and len(smtp.mails) == 2


def test_a_receiver_that_is_down_changes_nothing(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{BAD}", b"not pgp\n")
    dead = free_port()
    down = {
        "channels": [
            {"type": "webhook", "url": f"http://127.0.0.1:{dead}/hooks/{WEBHOOK_TOKEN}"},
            {"type": "email", "host": "127.0.0.1", "port": dead, "from": "d@acme.example",
             "to": ["x@acme.example"], "username": "u", "password": "${T_SMTP_PASSWORD}"},
        ]
    }  # fmt: skip
    result, report = run(bed, add_alerts(bed.config(), down))
    assert result.returncode == 1, result.stderr  # what a failure without alerts exits with
    assert report["status"] == "failure" and report["files"][0]["status"] == "failure"
    for channel in ("webhook to 127.0.0.1", "email via 127.0.0.1"):
        line = next(x for x in result.stderr.splitlines() if "could not be delivered" in x
                    and channel in x)  # fmt: skip
        assert "after 3 attempts" in line and "the run's outcome is unchanged" in line
    assert result.stderr.count("trying again") == 4  # 2 retries per channel
    assert "Traceback" not in result.stderr
    assert_no_secret(bed, result.stderr)
    from prometheus_client.parser import text_string_to_metric_families

    from dataflow import metrics
    from dataflow.ledger import Ledger

    state = Path(bed.env["DATAFLOW_STATE_DIR"])
    scraped = metrics.render(metrics.registry(lambda: Ledger(state))).decode()
    failed = {
        sample.labels["channel"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "dataflow_alert_delivery_failures_total"
    }
    assert failed == {"webhook": 1, "email": 1}  # counted, as the contract asks


# -- in-process: delivery, counters, redaction, configuration ----------------------------


def _alert(reason: str = "r") -> Alert:
    return Alert("failure", "flow", "run-1", "2026-01-01T00:00:00+00:00", "flow: failed.", reason)


def test_delivery_retries_counts_and_redacts(receiver: Receiver, smtp: SmtpServer) -> None:
    secret = "s3cret-" + WEBHOOK_TOKEN[-8:]
    register(secret)
    webhook = alerts.WebhookChannel(type="webhook", url=receiver.url)
    email = alerts.EmailChannel.model_validate({**smtp.channel(), "password": SMTP_PASSWORD})
    before = channels.delivery_failures_total()
    receiver.fail_next = [503]  # retried
    assert channels.deliver(_alert(f"token {secret} leaked"), [webhook, email]) == 2
    assert [p["status"] for p in receiver.posts] == [503, 200]
    for text in (receiver.posts[1]["raw"], smtp.mails[0].raw):
        assert secret not in text and "token *** leaked" in text
    receiver.fail_next = [400]  # final: not retried
    assert channels.deliver(_alert(), [webhook]) == 0
    assert len(receiver.posts) == 3
    wrong = email.model_copy(update={"password": SecretStr("wrong")})
    assert channels.deliver(_alert(), [wrong]) == 0  # refused login: final
    assert channels.delivery_failures_total() == before + 2
    assert channels.delivery_failures()[("flow", "webhook")] >= 1


def test_an_unverified_certificate_is_refused(smtp: SmtpServer) -> None:
    email = alerts.EmailChannel.model_validate({**smtp.channel(), "ca_bundle": None,
                                                "password": "x"})  # fmt: skip
    assert channels.deliver(_alert(), [email]) == 0
    assert smtp.mails == []


def report_with(status: str, total: int, bad: int, cause: str | None = None) -> RunReport:
    f = FileReport("f.csv", "l-1", status, rows_total=total, rows_rejected=bad)
    report = RunReport("flow", "run-2", "2026-01-01T00:00:00+00:00", files=[f])
    report.stop_cause = cause
    report.settle()
    return report


def test_which_events_a_run_raises() -> None:
    every = alerts.AlertsConfig(
        events=["failure", "partial", "api_down", "recovered"], partial_threshold_percent=10
    )

    def events(report: RunReport, previous: str | None = None) -> list[str]:
        return [a.event for a in run_alerts(every, report, (previous, None) if previous else None)]

    assert events(report_with("partial", 100, 10)) == ["partial"]  # 10 % >= 10 %
    assert events(report_with("partial", 100, 9)) == []  # below the threshold
    assert events(report_with("success", 10, 0), "failure") == ["recovered"]
    assert events(report_with("success", 10, 0), "success") == []
    assert events(report_with("failure", 10, 0), "failure") == ["failure"]
    down = report_with("failure", 10, 0, "api_down")
    down.reason = "the API looks down"
    down.settle()
    assert events(down) == ["api_down"]
    only_failure = alerts.AlertsConfig()  # default events: failure, no_file, api_down
    assert [a.event for a in run_alerts(only_failure, report_with("partial", 10, 9), None)] == []
    dry = report_with("failure", 10, 0)
    dry.dry_run = True
    assert run_alerts(every, dry, None) == []


def _flow(bed: Bed, file: str = "flow.yaml", **alerts_: Any) -> Path:
    path = bed.config(file=file)
    return add_alerts(path, alerts_) if alerts_ else path


def test_config_problems_name_file_line_and_path(bed: Bed) -> None:
    path = _flow(
        bed,
        events=["failure", "no-file"],
        partial_threshold_percent=120,
        expect_file={"daily": "25:00"},
        channels=[{"type": "webhook", "url": "ftp://x"}, {"type": "email", "host": "h",
                                                         "from": "a@b.c", "too": ["x@y.z"]}],
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_dataflow(path)
    problems = [str(p) for p in caught.value.problems]
    text = path.read_text().splitlines()

    def at(yaml_path: str, needle: str) -> None:
        match = [p for p in problems if f": {yaml_path}: " in p]
        assert match, problems
        line = int(match[0].split(":")[1])
        assert match[0].startswith(f"{path}:") and needle in text[line - 1], (match, text)

    at("alerts.events[1]", "no-file")
    at("alerts.partial_threshold_percent", "120")
    at("alerts.expect_file.daily", "25:00")
    at("alerts.channels[0].url", "ftp://x")
    at("alerts.channels[1].too", "too")
    assert any("alerts.channels[1]: required key 'to' is missing" in p for p in problems)


def test_defaults_file_is_merged_key_by_key_and_not_scheduled(bed: Bed) -> None:
    (bed.dir / "acme").mkdir()
    defaults = bed.dir / "defaults.yaml"
    defaults.write_text(
        "alerts:\n"
        "  events: [failure, api_down]\n"
        "  partial_threshold_percent: 25\n"
        "  channels:\n"
        "    - {type: webhook, url: 'https://hooks.example/${T_CLIENT_KEY}', format: slack}\n"
    )
    plain = load_dataflow(_flow(bed, "acme/plain.yaml"), env=bed.env)
    assert plain.model.alerts is not None
    assert plain.model.alerts.events == ["failure", "api_down"]
    assert plain.model.alerts.channels[0].type == "webhook"
    own = load_dataflow(_flow(bed, "acme/own.yaml", events=["partial"]), env=bed.env)
    assert own.model.alerts is not None
    assert own.model.alerts.events == ["partial"]  # overridden
    assert own.model.alerts.partial_threshold_percent == 25  # inherited
    assert len(own.model.alerts.channels) == 1
    assert discover([bed.dir]) == sorted(
        p.resolve() for p in (bed.dir / "acme/own.yaml", bed.dir / "acme/plain.yaml",
                              bed.dir / "flow.yaml") if p.exists()
    )  # fmt: skip

    defaults.write_text("alerts:\n  events: [failure]\n  chanels: []\n")
    with pytest.raises(ConfigError) as caught:
        load_dataflow(bed.dir / "acme/plain.yaml", env=bed.env)
    (problem,) = caught.value.problems
    assert str(problem) == (
        f"{defaults}:3: alerts.chanels: unknown key 'chanels'; did you mean 'channels'?"
    )
