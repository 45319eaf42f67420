"""The staging build sent before the build step asks for it (issue 12): by the process that runs the
edge (BuildAhead), or by `run start`, parked until the staging advance takes it (ParkedAhead,
parking.py). Either is offered to the build step (steps/build.py ``build``), which takes it only if it
is the very build it would have made itself, and otherwise builds as always.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import build_context, builders, gitrepo, parking
from orchestrator.build_context import PendingBuild
from orchestrator.builders import BuilderKind
from orchestrator.config import AppConfig, Settings
from orchestrator.errors import GateFailed
from orchestrator.logging import get_logger
from orchestrator.steps.build import BuildRequest, CachePolicy, build_tag, resolve_dockerfile

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine


class BuildAhead:
    """The staging build, started before the rest of the process is ready.

    A deploy spends about 150 ms before its build on work that does not decide the build: importing
    the docker SDK, opening the database, recording the run and claiming staging. Started first, the
    engine builds meanwhile; preparing it (``git archive``, for the legacy builder the context's tar)
    runs on a thread of its own, mostly waiting for git, so the process goes on at once. Nothing is
    decided early: the build names no image, so until the build step takes it (``take``: the same
    request on the same engine; for the legacy builder, the same files the SDK would send) it is an
    anonymous build; a run that never gets there cancels it on close.

    The legacy builder's request goes over the engine's socket (docker_wire.py, no SDK); a BuildKit
    build is the docker CLI, started with the arguments the build step would give it. Only where the
    outcome cannot differ from the build step's own: a local engine, no build secrets, a Dockerfile
    inside the context, and (legacy) a docker client config that adds nothing to the request
    (build_context.client_config_is_plain). Anywhere else nothing is started and the step builds as
    always.

    Started with ``park`` (by `run start`), the build is sent from a park (parking.py) and ``park(name)``
    hands it over to the staging advance instead of it ever being taken here."""

    sent_by = "this process"

    def __init__(
        self,
        app: AppConfig,
        settings: Settings,
        sha: str,
        request: Callable[[str], BuildRequest],
        socket_path: str,
        park: Path | None = None,
    ) -> None:
        self._app, self._settings, self._sha = app, settings, sha
        self._make_request = request
        self._socket_path = socket_path
        self._park_in = park
        self._stack = contextlib.ExitStack()
        self.request: BuildRequest | None = None
        self._build: PendingBuild | builders.CliBuild | parking.Park | None = None
        self._files: list[str] = []
        self._context: Path | None = None
        self._sent_at = 0.0
        self._closed = False
        self._lock = threading.Lock()
        # Set once the build is prepared (the tree unpacked, the context's tar made) and about to go
        # out, or not going out at all: ``wait_sent``.
        self._prepared = threading.Event()
        self._thread = threading.Thread(target=self._start, name="build-ahead", daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls,
        app: AppConfig,
        settings: Settings,
        sha: str,
        recorded_images: Sequence[str],
        environ: Mapping[str, str] = os.environ,
        *,
        park: Path | None = None,
    ) -> BuildAhead | None:
        socket_path = build_context.local_socket(environ)
        if socket_path is None or not app.builds_on.is_local or app.secrets:
            return None
        # What the build step will choose, if the engine runs BuildKit (a local 18.09+ engine does; if
        # not, the step chooses the legacy builder and this build is not taken).
        choice = builders.choose(settings.builder, settings.docker_cli, lambda: True)
        if choice.kind is BuilderKind.LEGACY and not build_context.client_config_is_plain(environ):
            return None
        cache = CachePolicy.trusting(recorded_images)
        return cls(
            app,
            settings,
            sha,
            lambda dockerfile: BuildRequest.of(app, sha, dockerfile, cache, choice),
            socket_path,
            park,
        )

    def _start(self) -> None:
        app, sha = self._app, self._sha
        park: parking.Park | None = None
        try:
            if self._park_in is not None:
                park = parking.Park(self._park_in)
                tree = park.tree
                gitrepo.unpack(app.source, sha, tree)
            else:
                # One git process (the archive) instead of one per question: the tree answers the rest.
                tree = self._stack.enter_context(gitrepo.extracted(app.source, sha))
            dockerfile = resolve_dockerfile(app, sha, lambda path: os.path.lexists(tree / path))
            request = self._make_request(dockerfile)
            text = (tree / dockerfile).read_bytes().decode(errors="replace")
            legacy = request.cli is None
            if request.in_context is None or (legacy and builders.buildkit_features(text)):
                return  # the SDK sends the first; the build step refuses the second, naming the feature
            context = tree / app.context
            if self._closed:
                return
            # Not under the lock: sending a big context takes a while, and ``close`` must not wait for it.
            build = self._send(request, park, tree, dockerfile, context)
            with self._lock:
                if self._closed:  # the run ended (or took nothing) meanwhile
                    self._discard(build)
                    return
                self._build, self.request, self._context = build, request, context
                park = None  # the build's now: ``park``, ``take`` or ``close`` ends it
        except GateFailed:
            return  # the build step fails it, with the evidence
        except Exception as exc:  # an optimisation never fails a deploy: the build step builds as always
            get_logger().warning("build_ahead_skipped", reason=f"{type(exc).__name__}: {exc}")
        finally:
            self._prepared.set()
            if park is not None:
                park.discard()
        if self._park_in is not None:
            parking.sweep(self._park_in, self._settings.build_timeout_s + parking.UNFINISHED_S)

    def _send(
        self, request: BuildRequest, park: parking.Park | None, tree: Path, dockerfile: str, context: Path
    ) -> PendingBuild | builders.CliBuild | parking.Park:
        assert request.in_context is not None
        self._sent_at = time.time()
        if request.cli is None:
            self._files = build_context.context_files(context, request.in_context)
            query = build_context.build_query(
                dockerfile=request.in_context,
                buildargs=dict(request.build_args),
                target=request.target,
                cache_from=request.cache_from,
                nocache=not request.cache_from,
            )
            body = build_context.context_tar(context, self._files)
            self._prepared.set()
            if park is not None:
                park.send(self._socket_path, query, body, self._settings.build_timeout_s)
                return park
            return PendingBuild(self._socket_path, query, body, self._settings.build_timeout_s)
        # BuildKit: the docker CLI. Its context path is the park's or a temporary directory's, never
        # one used before: BuildKit reuses a context transferred from the same path whose files have the
        # same size and mtime (parking.py), as two commits' trees unpacked in the same second do.
        scratch = (
            park.path
            if park is not None
            else Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="orchestrator-build-")))
        )
        iidfile = scratch / parking.IID
        argv, env = builders.buildkit_argv(
            request.cli,
            iidfile=iidfile,
            context_dir=context,
            dockerfile=tree / dockerfile,
            tag=None,
            build_args=dict(request.build_args),
            target=request.target,
        )
        self._prepared.set()
        if park is not None:
            park.start_cli(argv, env)
            return park
        return builders.CliBuild(argv, env, context, build_tag(self._app, self._sha), iidfile)

    def wait_sent(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the build is prepared and going out to the engine, or is
        not sent. What the process does next (importing, connecting) would hold the interpreter lock
        that unpacking the tree and making the context's tar need: the build is on the critical path,
        so it goes first. The sending itself is the engine reading the context, which needs no lock:
        the process goes on meanwhile."""
        self._prepared.wait(timeout_s)

    def take(self, request: BuildRequest, engine: DockerEngine) -> PendingBuild | builders.CliBuild | None:
        """The build under way, if it is ``request`` on ``engine`` (for the legacy builder, with the
        files the SDK would send); otherwise None, and it is ended. Taken once."""
        self._thread.join()
        with self._lock:
            taken, self._build = self._build, None
            self._closed = True
        if taken is None or self._context is None:
            return None
        assert not isinstance(taken, parking.Park), "a parked build is handed over, never taken here"
        same = (
            request == self.request
            and engine.socket_path == self._socket_path
            and not engine.cli_args
            and (
                request.cli is not None
                or (
                    request.in_context is not None
                    and (
                        not build_context.selects(self._context)
                        or engine.context_files(self._context, request.in_context) == self._files
                    )
                )
            )
        )
        if not same:
            get_logger().info("build_ahead_discarded", reason="not the build this step asks for")
            self._discard(taken)
            return None
        return taken

    def park(self, name: str) -> bool:
        """Hand the build over to whoever takes park ``name`` (the staging advance of the run just
        recorded); False if there was nothing to hand over (nothing was sent, or handing it over
        failed: then nothing is left of it)."""
        self._thread.join()
        with self._lock:
            built, self._build = self._build, None
            self._closed = True
        if not isinstance(built, parking.Park) or self.request is None:
            self.close()
            return False
        ticket = {
            "sha": self._sha,
            "request": parking.plain(self.request),
            "socket_path": self._socket_path,
            "context": self._app.context,
            "dockerfile_in_context": self.request.in_context,
            "files": self._files,
            "dockerignore": self._context is not None and build_context.selects(self._context),
            "sent_at": self._sent_at,
        }
        try:
            built.hand_over(name, ticket)
        except Exception as exc:  # an optimisation never fails a run: the staging advance builds itself
            get_logger().warning("build_ahead_not_parked", reason=f"{type(exc).__name__}: {exc}")
            built.discard()
            return False
        get_logger().info("build_ahead_parked", park=name)
        return True

    @staticmethod
    def _discard(build: PendingBuild | builders.CliBuild | parking.Park) -> None:
        """Cancel it. An image it had already finished stays unnamed, as a cancelled build's layers do:
        removing it by id could take away the image another process building the same commit is
        about to tag (same content, same id)."""
        if isinstance(build, parking.Park):
            build.discard()
        else:
            build.cancel()

    def close(self) -> None:
        """End a build never taken (the run stopped before its build): cancelled, and the context it
        was started from removed."""
        with self._lock:
            build, self._build = self._build, None
            self._closed = True
        if build is not None:
            self._discard(build)
        self._thread.join(timeout=30)
        self._stack.close()


class ParkedAhead:
    """The staging build `run start` parked for this run (parking.py), offered to the build step as a
    BuildAhead is, and taken on the same terms: the very request on the same engine, and (legacy, with a
    ``.dockerignore``) the files the docker SDK would send. A park not taken is ended (its build
    cancelled) and removed on close, whatever stopped the edge."""

    sent_by = "run start"

    def __init__(self, parked: parking.Parked, tag: str) -> None:
        self._parked: parking.Parked | None = parked
        self._tag = tag

    @classmethod
    def find(cls, app: AppConfig, settings: Settings, run_id: int, sha: str) -> ParkedAhead | None:
        parked = parking.Parked.claim(parking.root(), parking.key(settings.database_url, run_id))
        if parked is None:
            return None
        if parked.ticket.get("sha") != sha:  # not this run's (another database's, named alike)
            parked.discard()
            return None
        return cls(parked, build_tag(app, sha))

    def wait_sent(self, timeout_s: float) -> None:
        """Sent long ago, by `run start`."""

    def take(
        self, request: BuildRequest, engine: DockerEngine
    ) -> parking.ParkedEngineBuild | parking.ParkedCliBuild | None:
        parked, self._parked = self._parked, None
        if parked is None:
            return None
        ticket = parked.ticket
        same = (
            ticket.get("request") == parking.plain(request)
            and ticket.get("socket_path") == engine.socket_path
            and not engine.cli_args
        )
        why = "not the build this step asks for"
        if same and ticket.get("kind") == parking.ENGINE and ticket.get("dockerignore"):
            # Its .dockerignore read by build_context's rules: sent only if the SDK selects the same.
            context = parked.path / parking.TREE / str(ticket.get("context"))
            sdk_sends = engine.context_files(context, str(ticket.get("dockerfile_in_context")))
            same = sdk_sends == ticket.get("files")
            why = "the docker SDK would send other files"
        if not same:
            get_logger().info("build_ahead_discarded", reason=why, sent_by=self.sent_by)
            parked.discard()
            return None
        if ticket.get("kind") == parking.ENGINE:
            return parking.ParkedEngineBuild(parked)
        return parking.ParkedCliBuild(parked, self._tag)

    def close(self) -> None:
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.discard()
