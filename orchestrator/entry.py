"""The console script's entry: how this process uses the garbage collector, set before anything else is
imported (orchestrator/cli/ and the commands import the rest).

Why: the orchestrator is a short-lived process that CI starts three times per commit (issue 12), and
the cyclic garbage collector cost each call about 20-35 ms that bought nothing:

- start-up creates a few hundred thousand objects (modules, classes, dataclasses' generated code) and
  almost no cyclic garbage, yet at the default threshold (a collection every 700 net allocations) the
  collector traversed them again and again while they were imported;
- at exit the interpreter collects the whole heap once more, only to free memory the operating
  system takes back anyway.

So collections run 100 times less often (the collector stays on: a long wait for an approval still
frees its cycles), and at exit the heap is frozen, which keeps that last collection from traversing it.

The same reasoning for the exit itself: once the command has its exit code, the interpreter's teardown
(clearing 160 to 260 modules and freeing their objects one by one) cost each call 15-20 ms that the
operating system does at once when the process ends. So a command that exits with a code leaves by
``os._exit`` after what a normal exit does that can matter: every ``atexit`` handler (logging's flush,
the generated-code cache, weakref finalizers, then the freeze), and stdout and stderr flushed. Only when
no other thread is still running that Python would wait for (a non-daemon thread) and no profiler or
tracer waits for the exit; otherwise, and for an exit with a message, the ordinary exit. Tests import
orchestrator.cli directly and keep the interpreter's defaults.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading
from typing import NoReturn

# Generation 0 is collected after this many net allocations (the interpreter's default is 700).
YOUNG_THRESHOLD = 100_000


def main() -> None:
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    atexit.register(gc.freeze)
    # Before the first dataclass is made (the CLI's imports make dozens): see codecache.py.
    from orchestrator import codecache

    codecache.install()

    from orchestrator.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as done:
        if (done.code is None or isinstance(done.code, int)) and _nothing_else_running():
            _exit_without_teardown(done.code or 0)
        raise


def _nothing_else_running() -> bool:
    """No thread Python's own exit would wait for (daemon threads it would not wait for either), and no
    profiler or tracer (``python -m cProfile``, a debugger), which writes its results after the script
    returns, in the interpreter's own exit."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return False
    main_thread = threading.main_thread()
    return all(t is main_thread or t.daemon for t in threading.enumerate())


def _exit_without_teardown(code: int) -> NoReturn:
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away (``| head``) has nothing left to be told.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
