"""The error vocabulary shared by every layer.

Each error carries its kind and the exit code the CLI promises for it (README, "Exit codes"), so a CI
pipeline can tell a rejected deploy (1) from a typo (2), a busy environment (3) and a broken runner (4)
without parsing text. They are plain exceptions: nothing here prints or knows about click; the CLI alone
turns them into output and an exit status (cli/base.py, ``fail``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class OrchestratorError(Exception):
    exit_code: ClassVar[int] = 1
    kind: ClassVar[str] = "error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


class GateFailed(OrchestratorError):
    """A gate rejected the edge; the run was moved back to development."""

    exit_code = 1
    kind = "gate_failed"


class BadInput(OrchestratorError):
    """The caller asked for something that cannot exist: fix the command or the config."""

    exit_code = 2
    kind = "bad_input"


class Conflict(OrchestratorError):
    """The request is well-formed but not allowed now (state, lock, unfinished transition)."""

    exit_code = 3
    kind = "conflict"


class InfraUnavailable(OrchestratorError):
    """Something the orchestrator depends on did not answer; nothing was decided about the run."""

    exit_code = 4
    kind = "infrastructure_unavailable"


class StepTimeout(InfraUnavailable):
    """A step (build, push, pull, staging check, compose) ran past its configured limit. It says nothing
    about the commit, so the edge ends as ``error`` (exit 4), told apart from a gate's ``fail``."""

    kind = "timeout"


class GitError(InfraUnavailable):
    """git could not read the app's repository (gone, not a repository, git missing or hung): nothing is
    known about the commit, so nothing is decided (exit 4), and it is no ``DockerError``, which says the
    engine refused. A commit that lacks what the build needs is a verdict instead (``GateFailed``)."""


class AwaitingApproval(Conflict):
    """The edge needs a person's `orchestrator approve RUN` first; nothing was written about the edge.
    Exit 3 like any "not now": CI may wait (``advance --wait``) or come back later."""

    kind = "awaiting_approval"


class Rejected(OrchestratorError):
    """A person refused the edge (`orchestrator reject`): the run ended as ``rejected``. Exit 1, like a
    failed gate, because this commit will not ship and retrying (what CI does on 3) would loop."""

    exit_code = 1
    kind = "rejected"


class DockerError(Exception):
    """The engine answered and refused: a build failed, a name is taken, an image is gone. Not an
    OrchestratorError: a caller turns it into a failed gate with the evidence, or into one of those.
    Here rather than in docker_engine.py so that code which only catches it (the build step, the
    builders) does not import the docker SDK to do so."""

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log = log


class Interrupted(BaseException):
    """Raised by SIGTERM/SIGINT during an edge (lifecycle.py turns the signals into it). A BaseException,
    so that the ``except Exception`` that turns a crashing gate into a recorded error never swallows a
    cancellation. Exits as a shell reports a process ended by that signal: 128 + its number."""

    def __init__(self, signum: int) -> None:
        # ``signal`` here, not at the top: every command imports this module, and one that only reads the
        # history would pay about a millisecond for it.
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
