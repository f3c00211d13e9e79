"""Real receivers for alerts: an HTTP server that records POSTs, and an SMTP server (aiosmtpd)
with STARTTLS (a CA and a server certificate made here) and AUTH."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataflow.sandbox import free_port

SMTP_USER = "alerts-user"
SMTP_PASSWORD = "smtp-pass-" + secrets.token_hex(8)
WEBHOOK_TOKEN = "hook-token-" + secrets.token_hex(8)  # in the URL's path, like Slack's


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST; `fail_next` statuses
    are answered (in order) before it goes back to 200."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail_next: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status = receiver.fail_next.pop(0) if receiver.fail_next else 200
                    receiver.posts.append(
                        {
                            "path": self.path,
                            "status": status,
                            "content_type": self.headers.get("Content-Type"),
                            "raw": body.decode(),
                            "json": json.loads(body),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/{WEBHOOK_TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p["json"] for p in self.posts if p["status"] == 200]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mail:
    tls: bool
    authenticated: bool
    mail_from: str
    rcpt_tos: list[str]
    raw: str
    message: EmailMessage


@dataclass
class SmtpServer:
    port: int
    ca: Path
    mails: list[Mail] = field(default_factory=list)

    def channel(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "email",
            "host": "127.0.0.1",
            "port": self.port,
            "starttls": True,
            "username": SMTP_USER,
            "password": "${T_SMTP_PASSWORD}",
            "from": "dataflow@acme.example",
            "to": ["integrations@acme.example", "oncall@acme.example"],
            "ca_bundle": str(self.ca),
            **extra,
        }


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.server.mails.append(
            Mail(
                tls=session.ssl is not None,
                authenticated=bool(session.authenticated),
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                raw=raw.decode(),
                message=message,
            )
        )
        return "250 OK"


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dataflow test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("smtp-tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = SmtpServer(port=free_port(), ca=ca)
    controller = Controller(
        _Handler(server),
        hostname="127.0.0.1",
        port=server.port,
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
        auth_required=True,
    )
    controller.start()
    yield server
    controller.stop()


@pytest.fixture
def smtp(smtp_server: SmtpServer) -> SmtpServer:
    smtp_server.mails.clear()
    return smtp_server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def add_alerts(config: Path, alerts: dict[str, Any]) -> Path:
    """Give a dataflow file (written by `Bed.config`) an ``alerts:`` key."""
    doc = yaml.safe_load(config.read_text())
    doc["alerts"] = alerts
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


ALERT_ENV = {"T_SMTP_PASSWORD": SMTP_PASSWORD}
ALERT_SECRETS = [SMTP_PASSWORD, WEBHOOK_TOKEN]
