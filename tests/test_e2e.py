"""End to end: the dataflow CLI as a subprocess against sshd, gpg and the API emulator."""

from __future__ import annotations

import csv
import io
import json
import re

from dataflow.sandbox import SAMPLE_ROWS, sample_csv

from .conftest import Bed

NAME = "badges_2026-11-16.csv.gpg"
IST_0930_16NOV = 1794801600  # 16/11/2026 09:30 Asia/Kolkata = 04:00 UTC


def put_sample(bed: Bed, name: str = NAME, data: bytes | None = None) -> None:
    bed.sftp.put(f"inbox/{name}", bed.keys.encrypt(data if data is not None else sample_csv()))


def read_error_file(bed: Bed, name: str) -> list[list[str]]:
    text = (bed.sftp.root / "errors" / name).read_text()
    return list(csv.reader(io.StringIO(text)))


def assert_no_secrets(bed: Bed, *texts: str) -> None:
    for secret in bed.secret_values():
        for text in texts:
            assert secret not in text


def test_earned_badges_end_to_end(bed: Bed) -> None:
    put_sample(bed)
    config = bed.config()
    code, report, stderr = bed.run_json(config)

    assert code == 3, stderr  # partial: the sample has bad rows
    assert report["status"] == "partial"
    (f,) = report["files"]
    assert f["name"] == NAME and f["status"] == "partial"
    assert (
        f["rows_total"],
        f["rows_filtered"],
        f["rows_rejected"],
        f["rows_sent"],
        f["rows_succeeded"],
        f["rows_failed"],
    ) == (10, 0, 5, 5, 4, 1)
    assert f["processed_path"] == f"/processed/{NAME}"
    assert re.fullmatch(r"/errors/result_\d{14}_badges_2026-11-16\.csv", f["error_file"])

    # exactly what the API received, with the template's types
    received = sorted(bed.api.received(), key=lambda r: r["customerId"])
    assert [r["customerId"] for r in received] == [1001, 1002, 1003, 1010]
    assert received[0] == {
        "badgeMetaId": "BADGE-GOLD",
        "customerId": 1001,
        "earnEventDate": IST_0930_16NOV,
        "earnExpiresOn": 1798761600,
    }

    # the server's files
    assert bed.sftp.files("inbox") == []
    assert bed.sftp.files("processed") == [NAME]
    error_name = f["error_file"].rsplit("/", 1)[1]
    assert bed.sftp.files("errors") == [error_name]
    rows = read_error_file(bed, error_name)
    assert rows[0] == [
        "badge_id",
        "customer_id",
        "event_date",
        "expires_at",
        "LINE_NO",
        "error_stage",
        "status_code",
        "error_message",
    ]
    by_line = {int(r[4]): r for r in rows[1:]}
    assert sorted(by_line) == [5, 6, 7, 8, 9, 10]
    assert by_line[5][:4] == SAMPLE_ROWS[3].split(",")
    assert by_line[5][5:] == ["transform", "", "customerId: empty (column 'customer_id')"]
    assert (
        by_line[6][7] == "earnEventDate: '2026-11-17' does not match date_format '%d/%m/%Y %H:%M'"
    )
    assert by_line[7][7] == "customerId: 'abc' is not a positive integer"
    assert by_line[8][7] == "earnExpiresOn: must be after earnEventDate"
    assert by_line[9][5:] == [
        "destination",
        "1054",
        "Badge meta BADGE-UNKNOWN not found or inactive",
    ]
    assert by_line[10][:4] == ["", "", "", ""]
    assert by_line[10][7] == (
        "malformed line: expected 4 fields, found 5: "
        "BADGE-GOLD,1009,19/11/2026 07:45,1798761600,extra"
    )
    assert len(rows) - 1 == f["rows_rejected"] + f["rows_failed"]

    assert_no_secrets(bed, stderr, str(report), "\n".join(",".join(r) for r in rows))
    assert "accuracy 40.0%" in stderr

    # a second run finds nothing to do
    code, report, _ = bed.run_json(config)
    assert (code, report["status"], report["files"]) == (0, "no_files", [])
    assert len(bed.api.received()) == 4

    # the history, newest first, with per-file counts and accuracy
    history = bed.run("runs", "acme-earned-badges").stdout.splitlines()
    assert "acme-earned-badges  no_files" in history[0]
    assert "acme-earned-badges  partial" in history[1]
    assert history[2].strip() == (
        f"{NAME}: partial  total 10, sent 5, ok 4, rejected 5, failed 1, accuracy 40.0%"
    )


def test_dry_run_sends_nothing_and_moves_nothing(bed: Bed) -> None:
    put_sample(bed)
    code, report, stderr = bed.run_json(bed.config(), "--dry-run")
    assert code == 3, stderr
    assert report["dry_run"] is True
    (f,) = report["files"]
    assert (f["rows_total"], f["rows_rejected"], f["rows_sent"]) == (10, 5, 5)
    assert f["processed_path"] is None and f["error_file"] is None
    assert bed.api.requests() == []
    assert bed.sftp.files("inbox") == [NAME]
    assert bed.sftp.files("errors") == []


def test_clean_file_succeeds_with_exit_0(bed: Bed) -> None:
    good = "\n".join(["badge_id,customer_id,event_date,expires_at", *SAMPLE_ROWS[:3]]) + "\n"
    put_sample(bed, data=good.encode())
    code, report, stderr = bed.run_json(bed.config())
    assert code == 0, stderr
    (f,) = report["files"]
    assert (f["status"], f["rows_succeeded"], f["error_file"]) == ("success", 3, None)
    assert bed.sftp.files("errors") == []
    assert len(bed.api.received()) == 3


def test_wrong_key_is_a_file_level_failure(bed: Bed, other_pgp_keys: object) -> None:
    bed.sftp.put(f"inbox/{NAME}", other_pgp_keys.encrypt(sample_csv()))  # type: ignore[attr-defined]
    code, report, stderr = bed.run_json(bed.config())
    assert code == 1, stderr
    (f,) = report["files"]
    assert f["status"] == "failure"
    assert "encrypted for a key we do not hold" in f["reason"]
    assert f["processed_path"] == f"/errors/{NAME}"
    assert bed.sftp.files("inbox") == [] and bed.sftp.files("processed") == []
    error_name = f["error_file"].rsplit("/", 1)[1]
    rows = read_error_file(bed, error_name)
    assert rows[0] == ["LINE_NO", "error_stage", "status_code", "error_message"]
    assert len(rows) == 2 and rows[1][1] == "decrypt"
    assert bed.api.requests() == []


def test_missing_mapped_column_is_a_file_level_failure(bed: Bed) -> None:
    data = b"badge,customer_id,event_date,expires_at\nBADGE-GOLD,1,16/11/2026 09:30,1798761600\n"
    put_sample(bed, data=data)
    code, report, _ = bed.run_json(bed.config())
    assert code == 1
    (f,) = report["files"]
    assert f["reason"].startswith("mapped column(s) 'badge_id' missing from the header")
    assert bed.sftp.files("errors") == sorted([NAME, f["error_file"].rsplit("/", 1)[1]])
    assert bed.api.requests() == []


def test_same_content_again_is_a_duplicate(bed: Bed) -> None:
    encrypted = bed.keys.encrypt(sample_csv())
    bed.sftp.put(f"inbox/{NAME}", encrypted)
    config = bed.config()
    assert bed.run_json(config)[0] == 3
    bed.sftp.put("inbox/badges_again.csv.gpg", encrypted)
    code, report, stderr = bed.run_json(config)
    assert code == 0, stderr
    (f,) = report["files"]
    assert f["status"] == "duplicate"
    assert f["processed_path"] == "/processed/badges_again.csv.gpg"
    assert len(bed.api.received()) == 4  # nothing sent twice


def test_processed_name_taken_gets_a_timestamp_suffix(bed: Bed) -> None:
    (bed.sftp.root / "processed" / NAME).write_bytes(b"an older file")
    put_sample(bed)
    code, report, _ = bed.run_json(bed.config())
    assert code == 3
    path = report["files"][0]["processed_path"]
    assert re.fullmatch(rf"/processed/{re.escape(NAME)}\.\d{{14}}", path)
    assert (bed.sftp.root / "processed" / NAME).read_bytes() == b"an older file"


def test_bad_api_credentials_stop_the_run_and_keep_the_file(bed: Bed) -> None:
    put_sample(bed)
    result = bed.run(
        "run", str(bed.config()), "--json", env={"T_CLIENT_SECRET": "wrong-secret-value"}
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["status"] == "failure"
    assert "OAuth token request was refused (HTTP 401)" in report["reason"]
    assert bed.sftp.files("inbox") == [NAME]  # kept for the next run
    assert bed.sftp.files("errors") == [] and bed.api.received() == []
    assert "wrong-secret-value" not in result.stdout + result.stderr


def test_unknown_host_key_is_refused(bed: Bed) -> None:
    put_sample(bed)
    empty = bed.dir / "empty_known_hosts"
    empty.write_text("")
    code, report, _stderr = bed.run_json(bed.config(source={"known_hosts": str(empty)}))
    assert code == 1
    assert f"host key of [127.0.0.1]:{bed.sftp.port} is unknown" in report["reason"]
    assert "ssh-keyscan -p" in report["reason"]
    assert bed.sftp.files("inbox") == [NAME]


def test_secrets_never_appear_even_with_debug_logs(bed: Bed) -> None:
    put_sample(bed)
    result = bed.run("-v", "run", str(bed.config()), "--json")
    assert result.returncode == 3
    assert_no_secrets(bed, result.stdout, result.stderr)
    history = bed.run("runs", "--json")
    assert_no_secrets(bed, history.stdout, history.stderr)


def test_changed_file_with_the_same_name_is_processed_normally(bed: Bed) -> None:
    put_sample(bed)
    config = bed.config()
    assert bed.run_json(config)[0] == 3
    changed = sample_csv().replace(b"BADGE-SILVER,1010", b"BADGE-SILVER,1011")
    put_sample(bed, data=changed)
    code, report, stderr = bed.run_json(config)
    assert code == 3, stderr
    (f,) = report["files"]
    assert f["status"] == "partial" and f["rows_succeeded"] == 4
    assert sorted(r["customerId"] for r in bed.api.received()).count(1011) == 1
    assert re.fullmatch(rf"/processed/{re.escape(NAME)}\.\d{{14}}", f["processed_path"])


def test_a_bad_byte_deep_in_the_file_fails_it_before_anything_is_sent(bed: Bed) -> None:
    good = "".join(f"BADGE-GOLD,{2000 + i},16/11/2026 09:30,1798761600\n" for i in range(3000))
    data = ("badge_id,customer_id,event_date,expires_at\n" + good).encode() + b"BADGE-\xff,1,x,y\n"
    put_sample(bed, data=data)
    code, report, stderr = bed.run_json(bed.config(transform={"chunk_bytes": 4096}))
    assert code == 1, stderr
    (f,) = report["files"]
    assert f["status"] == "failure"
    assert f["reason"].startswith("the file is not valid utf-8 (byte 0xff at offset ")
    assert "on line 3002)" in f["reason"]
    assert bed.api.requests() == []  # nothing from the file was sent
    assert bed.sftp.files("errors")[0] == NAME


def test_values_that_would_open_as_formulas_are_neutralised_in_the_error_file(bed: Bed) -> None:
    data = (
        "badge_id,customer_id,event_date,expires_at\n"
        'BADGE-GOLD,"=HYPERLINK(""http://evil.example"",""x"")",16/11/2026 09:30,1798761600\n'
        "BADGE-GOLD,-2+3,16/11/2026 09:30,1798761600\n"
        "BADGE-GOLD,@SUM(A1:A9),16/11/2026 09:30,1798761600\n"
        "BADGE-GOLD,-12.5,16/11/2026 09:30,1798761600\n"
    )
    expected = [
        '\'=HYPERLINK("http://evil.example","x")',
        "'-2+3",
        "'@SUM(A1:A9)",
        "-12.5",  # a plain number stays as it is
    ]
    for on in (True, False):
        # the option off: values written raw (another content, or it is a duplicate)
        content = data if on else data + "BADGE-GOLD,x,16/11/2026 09:30,1798761600\n"
        put_sample(bed, f"badges_{on}.csv.gpg", content.encode())
        code, report, stderr = bed.run_json(bed.config(source={"neutralize_formulas": on}))
        assert code == 3, stderr
        (f,) = report["files"]
        rows = read_error_file(bed, f["error_file"].rsplit("/", 1)[1])
        got = [r[1] for r in rows[1:]]
        assert got == (expected if on else [v.lstrip("'") for v in expected] + ["x"])
