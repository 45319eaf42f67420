"""The console script's entry: how this process uses the garbage collector, set before anything else is
imported (cli.py and the commands import the rest).

Why: the orchestrator is a short-lived process that CI starts three times per commit (issue 12), and
the cyclic garbage collector cost each call about 20-35 ms that bought nothing:

- start-up creates a few hundred thousand objects (modules, classes, dataclasses' generated code) and
  almost no cyclic garbage, yet at the default threshold (a collection every 700 net allocations) the
  collector traversed them again and again while they were imported;
- at exit the interpreter collects the whole heap once more, only to free memory the operating
  system takes back anyway.

So collections run 100 times less often (the collector stays on: a long wait for an approval still
frees its cycles), and at exit the heap is frozen, which keeps that last collection from traversing it.
Module teardown, ``atexit`` handlers and finalizers run as always: the freeze is registered first, so it
runs after every other handler. Tests import cli.py directly and keep the interpreter's defaults.
"""

from __future__ import annotations

import atexit
import gc

# Generation 0 is collected after this many net allocations (the interpreter's default is 700).
YOUNG_THRESHOLD = 100_000


def main() -> None:
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    atexit.register(gc.freeze)
    # Before the first dataclass is made (cli.py's imports make dozens): see codecache.py.
    from orchestrator import codecache

    codecache.install()

    from orchestrator.cli import main as cli_main

    cli_main()
