"""The JSON log lines CI reads (orchestrator/logging.py writes them without structlog, issue 12): one
object a line on stderr with the event, level, UTC timestamp, the bound context and the call's keys."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from orchestrator import logging as orch_logging


class Stderr:
    """pytest's capture of stderr (not a TTY: "auto" means JSON)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def text(self) -> str:
        return self.capsys.readouterr().err


def lines(stderr: Stderr) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.text().splitlines()]


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Stderr:
    return Stderr(capsys)


def test_json_line_carries_event_level_timestamp_context_and_keys(stderr: Stderr) -> None:
    orch_logging.configure("auto", "info")
    log = orch_logging.get_logger(run_id=7).bind(gate="health")
    with orch_logging.bound_context(app="shop", edge="a->b"):
        log.info("gate_finished", status="pass", when=object())
    log.info("outside")
    first, second = lines(stderr)
    assert first["event"] == "gate_finished" and first["level"] == "info"
    assert (first["run_id"], first["gate"], first["app"], first["edge"]) == (7, "health", "shop", "a->b")
    assert first["status"] == "pass" and first["when"].startswith("<object")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["timestamp"])
    assert "app" not in second and second["run_id"] == 7


def test_level_filter(stderr: Stderr) -> None:
    orch_logging.configure("json", "warning")
    log = orch_logging.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [(x["event"], x["level"]) for x in lines(stderr)] == [("w", "warning"), ("e", "error")]


def test_exception_carries_the_traceback(stderr: Stderr) -> None:
    orch_logging.configure("json", "info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        orch_logging.get_logger().exception("gate_crashed")
    (line,) = lines(stderr)
    assert line["level"] == "error" and "RuntimeError: boom" in line["exception"]


def test_a_closed_stderr_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(orch_logging._output, "stream", buffer)
    buffer.close()
    orch_logging.get_logger().info("after_the_runner_went_away")


def test_console_format_is_not_json(stderr: Stderr) -> None:
    orch_logging.configure("console", "info")
    orch_logging.get_logger(run_id=3).info("transition_started", actor="ci")
    text = stderr.text()
    assert "transition_started" in text and "run_id=3" in text and "actor=ci" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
