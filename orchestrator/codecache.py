"""The code that ``dataclasses`` and ``namedtuple`` generate, compiled once and kept across processes.

Why (issue 12): every ``@dataclass`` writes its ``__init__``, ``__repr__``, ``__eq__``, ``__hash__`` and,
when frozen, ``__setattr__`` and ``__delattr__`` as source text and compiles each with ``exec``. The
orchestrator's values are frozen dataclasses (STYLE.md), and a CLI call makes dozens of them before its
first request to the engine: `runs list` 39 (50-70 ms on a 2-core runner), `advance --to deploy` 79
(about 100 ms), nearly all of it in ``compile`` (measured by timing the class processing in-process).
CPython caches the bytecode of modules (``__pycache__``) but not of text compiled at run time, so each
of the three processes of a CI pipeline paid it again.

The same text always compiles to the same code, so the text is the key: a class whose fields change
generates another text and misses. The cache holds each code object marshalled on its own, under this
interpreter's magic number (another Python ignores the file), and unmarshals only the ones a process
uses: turning every entry back into code (600 after a deploy) cost 8 ms, against 1 ms for this.
Only a file owned by this user and writable by no one else is read, since what it holds is run; a file
that cannot be read or written only costs the compile. Installed by the console script alone
(entry.py): tests and library users keep the stock behaviour.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import importlib.util
import marshal
import os
import stat
from collections.abc import Mapping
from types import CodeType, ModuleType
from typing import Any

# Enough for every class of a few orchestrator versions; past it, a save keeps only what this process
# used, so texts of versions no longer installed do not pile up.
MAX_ENTRIES = 3000
_HEADER = importlib.util.MAGIC_NUMBER + b"orchestrator-codecache-2\n"


def default_path(environ: Mapping[str, str] = os.environ) -> str:
    """Beside the docker CLI probe and the parks (builders.py, parking.py)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orchestrator", "generated-code.marshal")


class GeneratedCode:
    """Compiled code by source text: ``exec`` and ``eval`` that look there before compiling."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Code by (mode, text): as read, each still marshalled (bytes) until first used.
        self.known: dict[tuple[str, str], CodeType | bytes] = self._read()
        self.used: set[tuple[str, str]] = set()
        self.added = 0

    def _read(self) -> dict[tuple[str, str], CodeType | bytes]:
        try:
            with open(self.path, "rb") as f:
                info = os.fstat(f.fileno())
                if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    return {}
                data = f.read()
        except OSError:
            return {}
        if not data.startswith(_HEADER):
            return {}
        try:
            loaded = marshal.loads(memoryview(data)[len(_HEADER) :])  # no copy of the whole file
        except (EOFError, ValueError, TypeError):
            return {}
        if not isinstance(loaded, dict):
            return {}
        return {k: v for k, v in loaded.items() if isinstance(k, tuple) and isinstance(v, bytes)}

    def code(self, source: str, mode: str) -> CodeType:
        key = (mode, source)
        found = self.known.get(key)
        if isinstance(found, bytes):
            try:
                found = marshal.loads(found)
            except (EOFError, ValueError, TypeError):
                found = None
        if not isinstance(found, CodeType):
            found = compile(source, "<string>", mode)
            self.added += 1
        self.known[key] = found
        self.used.add(key)
        return found

    def exec(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if isinstance(source, str):
            source = self.code(source, "exec")
        exec(source, globals, locals)

    def eval(self, source: Any, globals: Any = None, locals: Any = None, /) -> Any:
        if isinstance(source, str):
            source = self.code(source, "eval")
        return eval(source, globals, locals)

    def save(self) -> None:
        """Write what this process compiled anew (nothing to do when every text was known)."""
        if not self.added:
            return
        import tempfile

        # A copy first: a daemon thread may still be making a class while the process exits.
        keep = dict(self.known)
        if len(keep) > MAX_ENTRIES:
            keep = {k: v for k, v in keep.items() if k in self.used}
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".generated-code-")
            try:
                with os.fdopen(fd, "wb") as f:
                    blobs = {k: v if isinstance(v, bytes) else marshal.dumps(v) for k, v in keep.items()}
                    f.write(_HEADER + marshal.dumps(blobs))
                os.replace(temp, self.path)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError:
            return
        self.added = 0


def install(
    path: str | None = None, modules: tuple[ModuleType, ...] = (dataclasses, collections)
) -> GeneratedCode:
    """Route the ``exec``/``eval`` of ``modules`` through the cache (a module-level name shadows the
    builtin), and save what was compiled anew at exit. Call before the first dataclass is made."""
    cache = GeneratedCode(path or default_path())
    for module in modules:
        module.exec = cache.exec  # type: ignore[attr-defined]
        module.eval = cache.eval  # type: ignore[attr-defined]
    atexit.register(cache.save)
    return cache
