"""`dataflow check` and `dataflow schema`, end to end: the CLI as a subprocess against the real
sshd, real gpg and the emulator over TCP. Every check must leave the servers as they were."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from dataflow.registry import BUILTINS
from dataflow.sandbox import sample_csv

from .conftest import Bed

NAME = "badges_2026-11-16.csv.gpg"


def tree(bed: Bed) -> dict[str, tuple[bool, int]]:
    """Everything below the SFTP chroot, hidden names included: path -> (is a dir, mode)."""
    root = bed.sftp.root
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(root))] = (path.is_dir(), st.st_mode)
    return found


def check(bed: Bed, config: Path, **env: str) -> tuple[int, list[str], str]:
    result = bed.run("check", str(config), env=env)
    for secret in bed.secret_values():
        assert secret not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()[1:], result.stdout


def line(lines: list[str], start: str) -> str:
    """The one line starting with `start` (after the indent)."""
    found = [ln.strip() for ln in lines if ln.strip().startswith(start)]
    assert len(found) == 1, (start, lines)
    return found[0]


def assert_untouched_api(bed: Bed) -> None:
    assert bed.api.received() == [] and bed.api.earned() == [] and bed.api.issued() == []
    assert all(r["records"] == 0 for r in bed.api.requests())


def test_all_checks_pass_one_ok_line_each_and_nothing_stays_on_the_servers(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    config = bed.config()
    before = tree(bed)
    code, lines, out = check(bed, config)
    assert code == 0, out
    assert out.splitlines()[0] == f"{config} (acme-earned-badges)"
    user = bed.sftp.user
    login = line(lines, "ok    sftp login")
    assert (
        login == f"ok    sftp login {user}@127.0.0.1:{bed.sftp.port}: host key matches known_hosts"
    )
    assert line(lines, "ok    sftp source_directory /inbox") == (
        "ok    sftp source_directory /inbox: listed, 1 file(s) ready "
        "(filename_pattern badges_.*\\.csv(\\.gpg)?)"
    )
    for key, directory in (("processed_directory", "/processed"), ("error_directory", "/errors")):
        line(lines, f"ok    sftp {key} {directory}: probe file written, renamed, removed")
    line(lines, "ok    sftp move /inbox -> /processed: probe file written, moved, removed")
    line(lines, "ok    pgp private key of block 'decrypt': unlocks with its passphrase")
    line(lines, f"ok    api OAuth token: obtained from {bed.api.url}/v3/oauth/token/generate")
    line(
        lines,
        f"ok    api oauth credentials: accepted by PUT {bed.api.url}/api_gateway/v1/badges/"
        "import/customerBadges (an empty request: no record sent)",
    )
    assert len(lines) == 8 and all(ln.startswith("  ok    ") for ln in lines), out
    assert tree(bed) == before  # no probe, no directory, no mode change left behind
    assert_untouched_api(bed)
    assert bed.api.token_requests() == 1


def test_basic_credentials_are_proven_on_the_endpoint_without_a_record(bed: Bed) -> None:
    basic = {"type": "basic", "username": "acme-basic", "password": "${T_BASIC_PASSWORD}"}
    config = bed.config(sink={"auth": basic}, template="earn_badges_bulk", transform=BULK)
    code, lines, out = check(bed, config)
    assert code == 0, out
    line(lines, f"ok    api basic credentials: accepted by POST {bed.api.url}/api_gateway/v1/")
    assert not [ln for ln in lines if "OAuth" in ln]
    assert_untouched_api(bed)
    assert bed.api.token_requests() == 0


BULK = {
    "mapping": {
        "badgeMetaId": "badge_id",
        "customerId": "customer_id",
        "earnEventDate": {"column": "event_date", "date_format": "%d/%m/%Y %H:%M"},
        "ownerType": {"const": "Loyalty"},
        "referenceId": {"const": "check"},
    }
}


def test_missing_directories_are_created_for_the_probe_and_removed_again(bed: Bed) -> None:
    config = bed.config(
        source={"processed_directory": "/processed/new/deeper", "error_directory": "/errors/x"}
    )
    before = tree(bed)
    code, lines, out = check(bed, config)
    assert code == 0, out
    line(lines, "ok    sftp processed_directory /processed/new/deeper: probe file written")
    line(lines, "ok    sftp move /inbox -> /processed/new/deeper: probe file written, moved")
    assert tree(bed) == before


def test_a_processed_directory_the_user_cannot_write_fails_naming_it_and_the_fix(
    bed: Bed,
) -> None:
    config = bed.config()
    processed = bed.sftp.root / "processed"
    processed.chmod(0o555)
    try:
        before = tree(bed)
        code, lines, out = check(bed, config)
        after = tree(bed)
    finally:
        processed.chmod(0o755)
    assert code == 1, out
    user = bed.sftp.user
    failed = line(lines, "FAIL  sftp processed_directory /processed: the SFTP user")
    assert (
        f"the SFTP user {user} cannot write to processed_directory /processed on "
        f"{user}@127.0.0.1:{bed.sftp.port} (permission denied): make it writable by {user} "
        "(create, rename and delete files), or set processed_directory to a directory that "
        "is; nothing was changed"
    ) in failed
    line(lines, "skip  sftp move /inbox -> /processed: needs a writable processed_directory")
    line(lines, "ok    sftp error_directory /errors")
    line(lines, "ok    pgp private key")
    assert after == before


def test_a_source_directory_files_cannot_be_moved_out_of_fails_naming_it(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(sample_csv()))
    config = bed.config()
    inbox = bed.sftp.root / "inbox"
    inbox.chmod(0o555)
    try:
        before = tree(bed)
        code, lines, out = check(bed, config)
        after = tree(bed)
    finally:
        inbox.chmod(0o755)
    assert code == 1, out
    line(lines, "ok    sftp source_directory /inbox: listed, 1 file(s) ready")
    failed = line(lines, "FAIL  sftp move /inbox -> /processed")
    assert f"cannot move files out of source_directory /inbox on {bed.sftp.user}@" in failed
    assert "(permission denied)" in failed
    assert f"ask the vendor to let {bed.sftp.user} create, rename and delete files in" in failed
    assert after == before


def test_a_wrong_pgp_passphrase_fails_naming_the_passphrase(bed: Bed) -> None:
    code, lines, out = check(bed, bed.config(), T_PGP_PASSPHRASE="not-the-passphrase")
    assert code == 1, out
    failed = line(lines, "FAIL  pgp private key of block 'decrypt': ")
    assert "the passphrase does not unlock the private key; fix passphrase" in failed
    assert "not-the-passphrase" not in out
    assert [ln for ln in lines if not ln.startswith("  ok")] == ["  " + failed]


def test_refused_oauth_credentials_fail_and_no_record_is_sent(bed: Bed) -> None:
    code, lines, out = check(bed, bed.config(), T_CLIENT_SECRET="wrong-secret")
    assert code == 1, out
    failed = line(lines, "FAIL  api OAuth token")
    assert "the OAuth token request was refused (HTTP 401); check client_key and" in failed
    line(lines, "skip  api oauth credentials: needs a token")
    assert "wrong-secret" not in out
    assert_untouched_api(bed)


def test_refused_basic_credentials_fail_naming_the_endpoint(bed: Bed) -> None:
    basic = {"type": "basic", "username": "acme-basic", "password": "${T_BASIC_PASSWORD}"}
    code, lines, out = check(bed, bed.config(sink={"auth": basic}), T_BASIC_PASSWORD="nope-nope")
    assert code == 1, out
    failed = line(lines, "FAIL  api basic credentials")
    assert (
        f"PUT {bed.api.url}/api_gateway/v1/badges/import/customerBadges refused the "
        "credentials (HTTP 401:"
    ) in failed
    assert_untouched_api(bed)


def test_an_unknown_host_key_fails_with_how_to_fetch_and_verify_it(bed: Bed) -> None:
    known = bed.dir / "empty_known_hosts"
    known.write_text("")
    code, lines, out = check(bed, bed.config(source={"known_hosts": str(known)}))
    assert code == 1, out
    port = bed.sftp.port
    failed = line(lines, "FAIL  sftp login")
    assert f"host key of [127.0.0.1]:{port} is unknown: no entry in {known}" in failed
    assert f"'ssh-keyscan -p {port} 127.0.0.1 > host.keys'" in failed
    assert "'ssh-keygen -lf host.keys', compare them with the fingerprint the vendor" in failed
    for start in (
        "skip  sftp source_directory",
        "skip  sftp processed_directory",
        "skip  sftp move",
    ):
        line(lines, start)
    line(lines, "ok    pgp")  # the other blocks are still checked
    assert known.read_text() == ""  # never trusted on first use


def test_an_invalid_file_is_a_config_error_and_connects_nowhere(bed: Bed) -> None:
    config = bed.config(source={"port": "not-a-port"})
    result = bed.run("check", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{config}:" in result.stdout and "port" in result.stdout
    assert bed.api.requests() == [] and bed.api.token_requests() == 0


def test_schema_prints_json_with_every_built_in_block_type(bed: Bed) -> None:
    result = bed.run("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    types = {
        d["properties"]["type"].get("const", d["properties"]["type"].get("default"))
        for d in schema["$defs"].values()
        if "type" in d.get("properties", {})
    }
    assert set(BUILTINS) <= types, types
    docs = bed.run("schema", "--docs")
    assert docs.returncode == 0
    for name in BUILTINS:
        assert f"\n## {name}\n" in docs.stdout


def test_lines_are_colored_on_a_terminal_and_plain_text_off_it(bed: Bed) -> None:
    config = bed.config()
    code, _, plain = check(bed, config)
    assert code == 0 and "\x1b[" not in plain
    leader, follower = pty.openpty()
    with os.fdopen(leader, "rb", buffering=0) as screen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataflow", "check", str(config)],
            env={**os.environ, **bed.env, "TERM": "xterm-256color"},
            stdout=follower,
            stderr=subprocess.DEVNULL,
        )
        os.close(follower)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
            while chunk := screen.read(4096):
                shown += chunk
        assert proc.wait(timeout=120) == 0
    text = shown.decode()
    assert "\x1b[" in text  # rich's colors
    assert "ok" in text and "sftp login" in text and "pgp private key" in text


def test_a_key_whose_passphrase_cannot_be_checked_is_not_reported_ok(bed: Bed) -> None:
    """An expired key: gpg will not encrypt the probe to it, so the unlock is not proven."""
    from dataflow.sandbox import _gpg, _gpg_home

    uid, passphrase = "Expired <expired@dataflow.invalid>", "expired-pass-phrase"
    with _gpg_home() as home:
        made = ("--faked-system-time", "20200101T000000!", "--passphrase", passphrase)
        _gpg(home, *made, "--quick-generate-key", uid, "future-default", "default", "1d")
        exported = _gpg(home, "--passphrase", passphrase, "--armor", "--export-secret-keys", uid)
    (bed.dir / "expired.asc").write_bytes(exported)
    config = bed.config(decrypt={"private_key": "${file:expired.asc}", "passphrase": passphrase})
    code, lines, out = check(bed, config)
    assert code == 1, out
    skipped = line(lines, "skip  pgp private key of block 'decrypt': imported, but its")
    assert "passphrase could not be checked: gpg will not encrypt to the key" in skipped
    assert passphrase not in out
