"""Progress of the long steps (build output, push, health waits) for a person watching a terminal.

A build can take minutes and a health wait up to its timeout; on a terminal, silence until the end
looks like a hang. The adapters report what they see here (``line``: a line of output; ``status``: how
far a wait or a transfer got, replacing the previous status) and do not know who listens. The CLI
installs the listener once per process (``install``):

- on a terminal: a status line on stderr redrawn in place, output lines above it (``TerminalProgress``);
- off a terminal (CI): nothing; the structured logs say what a pipeline needs, one JSON line per event;
- ``--verbose``: plain lines on stderr wherever stderr goes, statuses at most every few seconds;
- ``--quiet``: nothing, even on a terminal.

Every text is made safe for a terminal here (control characters shown escaped): build output and URLs
come from the apps, and an escape sequence in them must not reach the operator's terminal.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Protocol, TextIO

# C0 and C1 control characters other than tab (the set cli.printable escapes, newline included: one
# report is one line).
_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f-\x9f]"


def _safe(text: str) -> str:
    return re.sub(_CONTROL, lambda m: f"\\x{ord(m.group()):02x}", text.rstrip("\r\n"))


class Listener(Protocol):
    def line(self, step: str, text: str) -> None: ...

    def status(self, step: str, text: str) -> None: ...

    def clear(self) -> None: ...


class Silent:
    """Off a terminal, and with --quiet: the logs are the record."""

    def line(self, step: str, text: str) -> None:
        pass

    def status(self, step: str, text: str) -> None:
        pass

    def clear(self) -> None:
        pass


class TerminalProgress:
    """One status line at the bottom of the terminal, redrawn in place; output lines scroll above it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._status = ""

    def _width(self) -> int:
        import shutil  # with bz2 and lzma: only when progress is drawn

        return max(20, shutil.get_terminal_size((100, 24)).columns - 1)

    def _redraw(self) -> None:
        # The cursor is left at the start of the line, so a log line written meanwhile starts there.
        self._stream.write("\r\x1b[K" + self._status[: self._width()] + "\r")
        self._stream.flush()

    def line(self, step: str, text: str) -> None:
        with self._lock:
            self._stream.write(f"\r\x1b[K{step} | {_safe(text)}\n")
            self._redraw()

    def status(self, step: str, text: str) -> None:
        with self._lock:
            self._status = f"{step}: {_safe(text)}"
            self._redraw()

    def clear(self) -> None:
        with self._lock:
            if self._status:
                self._status = ""
                self._stream.write("\r\x1b[K")
                self._stream.flush()


class PlainProgress:
    """--verbose off a terminal: every output line, and a status when it changed step or every
    ``every_s`` seconds (a CI log must not get a line per health poll)."""

    def __init__(self, stream: TextIO, every_s: float = 5.0) -> None:
        self._stream = stream
        self._every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def line(self, step: str, text: str) -> None:
        with self._lock:
            self._stream.write(f"{step} | {_safe(text)}\n")
            self._stream.flush()

    def status(self, step: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(step, float("-inf")) < self._every_s:
                return
            self._last[step] = now
            self._stream.write(f"{step}: {_safe(text)}\n")
            self._stream.flush()

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


_listener: Listener = Silent()


def install(listener: Listener) -> None:
    global _listener
    _listener = listener


def choose(stream: TextIO, *, quiet: bool, verbose: bool) -> Listener:
    """What the CLI installs for ``stream`` (stderr) and its --quiet / --verbose."""
    if quiet:
        return Silent()
    if stream.isatty():
        return TerminalProgress(stream)
    return PlainProgress(stream) if verbose else Silent()


def on_terminal() -> bool:
    """Whether a person sees the progress on a terminal (then a log line saying the same is noise)."""
    return isinstance(_listener, TerminalProgress)


def line(step: str, text: str) -> None:
    """A line of a step's output (a build's), shown as it comes."""
    for part in text.splitlines() or [""]:
        if part.strip():
            _listener.line(step, part)


def status(step: str, text: str) -> None:
    """How far a step got (elapsed time, bytes pushed); replaces the step's previous status."""
    _listener.status(step, text)


def clear() -> None:
    """The step is over: its status goes away."""
    _listener.clear()
