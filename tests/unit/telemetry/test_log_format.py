"""The process log's JSON format and the ids a line about a request carries."""

from __future__ import annotations

import json
import logging
import sys

from proxy.telemetry.log_format import JsonFormatter, correlation, text_format


def a_record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("proxy.stages.attempt", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_one_json_object_per_line_with_the_request_ids() -> None:
    ids = correlation(b"rid-1", b"4bf92f3577b34da6a3ce929d0e0e4736")
    line = JsonFormatter("worker-1").format(a_record("upstream %s broke", "10.0.0.7:8080", **ids))
    parsed = json.loads(line)
    assert list(parsed) == ["time", "level", "logger", "message", "worker", "request_id", "trace_id"]
    assert parsed["time"].endswith("Z") and len(parsed["time"]) == len("2026-01-02T03:04:05.678Z")
    assert (parsed["level"], parsed["logger"], parsed["message"]) == (
        "warning", "proxy.stages.attempt", "upstream 10.0.0.7:8080 broke")
    assert (parsed["request_id"], parsed["trace_id"]) == ("rid-1", "4bf92f3577b34da6a3ce929d0e0e4736")


def test_a_line_about_no_request_has_no_ids_and_an_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("proxy.app", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert "request_id" not in parsed and "worker" not in parsed
    assert "ValueError: boom" in parsed["exception"]


def test_missing_ids_are_dashes_and_the_text_format_names_the_worker() -> None:
    assert correlation(b"", b"") == {"request_id": "-", "trace_id": "-"}
    assert " worker-2 %(name)s" in text_format("worker-2")
