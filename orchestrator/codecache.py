"""The code that ``dataclasses`` and ``namedtuple`` generate, compiled once and kept across processes.

Why (issue 12): every ``@dataclass`` writes its ``__init__``, ``__repr__``, ``__eq__``, ``__hash__`` and,
when frozen, ``__setattr__`` and ``__delattr__`` as source text and compiles each with ``exec``. The
orchestrator's values are frozen dataclasses (STYLE.md), and a CLI call makes dozens of them before its
first request to the engine: `runs list` 39 (50-70 ms on a 2-core runner), `advance --to deploy` 79
(about 100 ms), nearly all of it in ``compile`` (measured by timing the class processing in-process).
CPython caches the bytecode of modules (``__pycache__``) but not of text compiled at run time, so each
of the three processes of a CI pipeline paid it again.

The same text always compiles to the same code, so the text is the key: a class whose fields change
generates another text and misses. The file holds each code object marshalled on its own, under this
interpreter's magic number (another Python ignores the file), behind a small index by the text's
64-bit hash (``importlib.util.source_hash``, what CPython itself trusts to match a hash-based .pyc to
its source, PEP 552). The file is mapped rather than read: a process unmarshals the index and the
entries it uses, and the pages of the others are never touched. Reading and unmarshalling the whole file
(760 entries, 930 KB after the test suite) cost 2.5-4 ms of every command's start, against under 1 ms.
Only a file owned by this user and writable by no one else is read, since what it holds is run; a file
that cannot be read or written only costs the compile. Installed by the console script alone
(entry.py): tests and library users keep the stock behaviour.

The config file is kept the same way, parsed (``toml``): every command reads it, and importing the TOML
parser (``tomllib``, whose module compiles a dozen regular expressions) took 4-8 ms of each start on a
2-core runner, against a few microseconds to unmarshal the tables it gave for the same text. A config
holding a date or time (which ``marshal`` cannot write, and which no setting takes) is parsed each time.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import importlib.util
import marshal
import mmap
import os
import stat
from collections.abc import Mapping
from types import CodeType, ModuleType
from typing import Any

# Enough for every class of a few orchestrator versions; past it, a save keeps only what this process
# used, so texts of versions no longer installed do not pile up.
MAX_ENTRIES = 3000
# The file: this header, the index's length (8 bytes, little-endian), the index (marshalled
# {(mode, source_hash of the text): (offset, size)}, offsets from the end of the index), then each code
# object marshalled on its own.
_HEADER = importlib.util.MAGIC_NUMBER + b"orchestrator-codecache-3\n"
_LENGTH = 8
# What an entry must unmarshal to, by its mode: anything else (a damaged entry) is made again.
_KINDS: dict[str, type] = {"exec": CodeType, "eval": CodeType, "toml": dict}

Key = tuple[str, bytes]

# The cache ``install`` made for this process, if it did (``installed``).
_installed: GeneratedCode | None = None


def _key(mode: str, source: str) -> Key:
    return (mode, importlib.util.source_hash(source.encode()))


def default_path(environ: Mapping[str, str] = os.environ) -> str:
    """Beside the docker CLI probe and the parks (builders.py, parking.py)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orchestrator", "generated-code.marshal")


class GeneratedCode:
    """Compiled code by source text: ``exec`` and ``eval`` that look there before compiling; and parsed
    TOML by its text (``toml``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # The file's entries, still marshalled: where each one is in ``_entries`` (a view of the mapping).
        self._index, self._entries = self._open()
        # The code (and tables) this process used, by (mode, text): found in the file or made anew.
        self.known: dict[tuple[str, str], Any] = {}
        self.added = 0

    def _open(self) -> tuple[dict[Key, tuple[int, int]], memoryview]:
        nothing: tuple[dict[Key, tuple[int, int]], memoryview] = ({}, memoryview(b""))
        try:
            with open(self.path, "rb") as f:
                info = os.fstat(f.fileno())
                if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    return nothing
                if info.st_size <= len(_HEADER) + _LENGTH:
                    return nothing
                # A save replaces the file (os.replace): the mapped one is never written to.
                data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except (OSError, ValueError):
            return nothing
        start = len(_HEADER) + _LENGTH
        if data[: len(_HEADER)] != _HEADER:
            return nothing
        end = start + int.from_bytes(data[len(_HEADER) : start], "little")
        try:
            index = marshal.loads(data[start:end])
        except (EOFError, ValueError, TypeError):
            return nothing
        if not isinstance(index, dict):
            return nothing
        return index, data[end:]

    def _stored(self, key: Key) -> Any:
        where = self._index.get(key)
        kind = _KINDS.get(key[0]) if isinstance(key, tuple) and key else None
        if where is None or kind is None:
            return None
        try:
            offset, size = where
            value = marshal.loads(self._entries[offset : offset + size])
        except (EOFError, ValueError, TypeError):
            return None
        return value if isinstance(value, kind) else None

    def stored(self) -> dict[Key, Any]:
        """Every entry of the file that would be used, unmarshalled, by (mode, hash of its text): to
        inspect the file (a process only unmarshals the entries it asks for)."""
        found = {key: self._stored(key) for key in self._index}
        return {key: code for key, code in found.items() if code is not None}

    def code(self, source: str, mode: str) -> CodeType:
        found = self.known.get((mode, source))
        if found is None:
            found = self._stored(_key(mode, source))
            if found is None:
                found = compile(source, "<string>", mode)
                self.added += 1
            self.known[(mode, source)] = found
        return found

    def toml(self, text: str) -> dict[str, Any]:
        """``tomllib.loads(text)``, from the file when this text was parsed before. Each call returns
        tables of its own (a caller may change them). Raises ``tomllib.TOMLDecodeError`` as it does."""
        found = self.known.get(("toml", text))
        if found is None:
            found = self._stored(_key("toml", text))
            if found is None:
                import tomllib

                found = tomllib.loads(text)
                try:
                    marshal.dumps(found)
                except ValueError:  # a date or time: parsed again next time
                    return found
                self.added += 1
            self.known[("toml", text)] = found
        return marshal.loads(marshal.dumps(found))

    def exec(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if isinstance(source, str):
            source = self.code(source, "exec")
        exec(source, globals, locals)

    def eval(self, source: Any, globals: Any = None, locals: Any = None, /) -> Any:
        if isinstance(source, str):
            source = self.code(source, "eval")
        return eval(source, globals, locals)

    def save(self) -> None:
        """Write what this process compiled or parsed anew (nothing to do when every text was known), with
        the file's other entries that still unmarshal to what their mode makes, unless keeping them would
        pass ``MAX_ENTRIES``."""
        if not self.added:
            return
        import tempfile

        # A copy first: a daemon thread may still be making a class while the process exits.
        used = {_key(mode, text): code for (mode, text), code in list(self.known.items())}
        entries: dict[Key, bytes] = {}
        if len(set(self._index) | set(used)) <= MAX_ENTRIES:
            for key in self._index:
                value = self._stored(key)  # a damaged entry is left out, not copied again
                if value is not None:
                    entries[key] = marshal.dumps(value)
        for key, code in used.items():
            entries[key] = marshal.dumps(code)
        index, offset = {}, 0
        for key, blob in entries.items():
            index[key] = (offset, len(blob))
            offset += len(blob)
        head = marshal.dumps(index)
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".generated-code-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_HEADER + len(head).to_bytes(_LENGTH, "little") + head)
                    f.writelines(entries.values())
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
    builtin), offer it to the config's parser (``installed``), and save what was made anew at exit.
    Call before the first dataclass is made."""
    global _installed
    cache = GeneratedCode(path or default_path())
    for module in modules:
        module.exec = cache.exec  # type: ignore[attr-defined]
        module.eval = cache.eval  # type: ignore[attr-defined]
    atexit.register(cache.save)
    _installed = cache
    return cache


def installed() -> GeneratedCode | None:
    """The cache of this process, when its console script installed one (never in tests that did not)."""
    return _installed
