"""Structured logs: JSON lines for machines (off a TTY, or ORCH_LOG_FORMAT=json), console for people.

Logs always go to stderr so that ``--json`` output on stdout stays exactly one parseable object.

The JSON lines are written here with the standard library, in the shape structlog's JSONRenderer wrote
them (``event``, ``level``, an ISO ``timestamp`` in UTC, the bound context and the call's keys): CI runs
the orchestrator off a TTY in every pipeline, and importing structlog (with rich behind its console
renderer) cost about 50 ms of every call's start-up (issue 12). structlog's console renderer is still
what people see on a terminal; it is imported on the first line printed there.

Context is bound the structlog way: ``get_logger(**context).bind(...)`` for one logger, and
``bound_context(...)`` for every line logged inside a block (a context variable, so threads and the
heartbeat each see their own).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}

_NOTHING: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("orchestrator_log_context", default=_NOTHING)


@dataclass
class _Output:
    """Where and how lines are written, as ``configure`` last set it: the lowest level written, JSON or
    console, the stream, and the console renderer (made on the first console line)."""

    level: int = INFO
    use_json: bool = True
    # None: whatever sys.stderr is when the line is written (a logger used before configure()).
    stream: TextIO | None = None
    console: Callable[[dict[str, Any]], str] | None = None


_output = _Output()


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Where and how lines are written for the rest of the process. The stream is the ``sys.stderr`` of
    this moment (a CliRunner's capture buffer in tests: ``reset()`` forgets it)."""
    global _output
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    _output = _Output(_LEVELS.get(level, INFO), use_json, sys.stderr)


def reset() -> None:
    """Back to the defaults (JSON at info on the current stderr), and no context bound."""
    global _output
    _output = _Output()
    _context.set(_NOTHING)


@contextmanager
def bound_context(**values: object) -> Iterator[None]:
    """Every line logged inside the block carries ``values`` (run_id, app, sha, edge of an edge)."""
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _structlog_console() -> Callable[[dict[str, Any]], str]:
    import structlog

    renderer = structlog.dev.ConsoleRenderer(colors=False)
    return lambda event_dict: str(renderer(None, "", event_dict))


class Logger:
    """A logger with context bound to it: ``debug``, ``info``, ``warning``, ``error``, ``exception``."""

    __slots__ = ("_bound",)

    def __init__(self, bound: Mapping[str, object]) -> None:
        self._bound = bound

    def bind(self, **values: object) -> Logger:
        return Logger({**self._bound, **values})

    def debug(self, event: str, **values: object) -> None:
        self._emit(DEBUG, "debug", event, values)

    def info(self, event: str, **values: object) -> None:
        self._emit(INFO, "info", event, values)

    def warning(self, event: str, **values: object) -> None:
        self._emit(WARNING, "warning", event, values)

    def error(self, event: str, **values: object) -> None:
        self._emit(ERROR, "error", event, values)

    def exception(self, event: str, **values: object) -> None:
        """An error line with the exception being handled."""
        values.setdefault("exc_info", True)
        self._emit(ERROR, "error", event, values)

    def _emit(self, levelno: int, level: str, event: str, values: Mapping[str, object]) -> None:
        out = _output
        if levelno < out.level:
            return
        line: dict[str, Any] = {**_context.get(), **self._bound, **values, "event": event}
        line["level"] = level
        line["timestamp"] = _timestamp()
        exc_info = line.pop("exc_info", None)
        if exc_info is True:
            exc_info = sys.exc_info()
        if out.use_json:
            if isinstance(exc_info, tuple) and exc_info[0] is not None:
                import traceback  # only when there is one to format: it costs every process 1-2 ms to load

                line["exception"] = "".join(traceback.format_exception(*exc_info)).rstrip()
            text = json.dumps(line, default=repr)
        else:
            if out.console is None:
                out.console = _structlog_console()
            if isinstance(exc_info, tuple) and exc_info[0] is not None:
                line["exc_info"] = exc_info
            text = out.console(line)
        stream = out.stream if out.stream is not None else sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            # A closed or broken stderr (the CI runner's pipe went away) must not stop an edge halfway:
            # what happened is recorded in the database either way.
            pass


def get_logger(**context: object) -> Logger:
    return Logger(context)
