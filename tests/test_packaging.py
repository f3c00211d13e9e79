"""The repository's other promises: docker-compose, the registry, the error-file name."""

from __future__ import annotations

import asyncio
import importlib
import time
from pathlib import Path

import pytest
import yaml

from dataflow.block import Block
from dataflow.errorfile import error_file_name
from dataflow.ratelimit import MAX_RETRY_AFTER, SlidingWindow, retry_after
from dataflow.redact import redact, register
from dataflow.registry import BUILTINS, block_types

ROOT = Path(__file__).resolve().parent.parent


def test_docker_compose_parses_and_references_what_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {
        "sftp", "emulator", "scheduler", "postgres", "redis", "db-upgrade", "worker"
    }  # fmt: skip
    assert services["worker"]["command"][0] == "worker" and "healthcheck" in services["worker"]
    assert services["scheduler"]["command"][-2:] == ["--executor", "celery"]
    for name in ("emulator", "scheduler", "worker", "db-upgrade"):
        assert services[name]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for copied in ("pyproject.toml", "README.md", "dataflow"):
        assert (ROOT / copied).exists() and copied in dockerfile
    assert services["emulator"]["entrypoint"] == ["python", "-m", "dataflow.emulator"]
    assert (ROOT / "dataflow" / "emulator" / "__main__.py").is_file()
    assert services["scheduler"]["command"][:2] == ["schedule", "/configs"]
    http = services["scheduler"]["command"][3]
    assert services["scheduler"]["command"][2] == "--http" and http.endswith(":8090")
    probe = " ".join(services["scheduler"]["healthcheck"]["test"])
    assert "/healthz" in probe and ":8090" in probe
    for volume in services["scheduler"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    assert "./configs:/configs:ro" in services["scheduler"]["volumes"]
    env = services["scheduler"]["environment"]
    assert env["ACME_API_URL"] == "http://emulator:8080"
    assert set(services["scheduler"]["depends_on"]) == {"sftp", "emulator", "redis", "db-upgrade"}


def test_builtin_blocks_are_registered_explicitly() -> None:
    assert set(BUILTINS) == {"sftp_read", "pgp_decrypt", "field_mapping", "http_write", "schedule"}
    for name, cls in block_types().items():
        assert issubclass(cls, Block)
        assert cls.Config.model_fields["type"].default == name
        module = importlib.import_module(cls.__module__)
        assert module.__name__ == f"dataflow_blocks.{name}"
        assert "Example::" in (module.__doc__ or "")  # every block documents itself


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("badges_1.csv.gpg", "result_20261116060000_badges_1.csv"),
        ("badges_1.csv.zip.pgp", "result_20261116060000_badges_1.csv"),
        ("B.CSV.ASC", "result_20261116060000_B.CSV"),
        ("plain.csv", "result_20261116060000_plain.csv"),
        (".gpg", "result_20261116060000_.gpg"),
    ],
)
def test_error_file_name(original: str, expected: str) -> None:
    assert error_file_name(original, "20261116060000") == expected


def test_redaction() -> None:
    register("hunter2-secret")
    register("ab")  # too short to mask safely
    assert redact("password hunter2-secret in ab") == "password *** in ab"


def test_retry_after_parsing() -> None:
    assert retry_after("3", 1.0) == 3.0
    assert retry_after("junk", 1.5) == 1.5
    assert retry_after("99999", 1.0) == MAX_RETRY_AFTER
    assert retry_after(None, 2.0) == 2.0
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 60))
    assert retry_after(past, 1.0) == 0.0


def test_sliding_window_never_exceeds_its_limit() -> None:
    window = SlidingWindow(3, 0.3)
    stamps: list[float] = []

    async def main() -> None:
        async def one() -> None:
            await window.acquire()
            stamps.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(9)))

    asyncio.run(main())
    stamps.sort()
    for i in range(len(stamps) - 3):
        assert stamps[i + 3] - stamps[i] >= 0.29
