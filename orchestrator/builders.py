"""Which builder builds an app's image, and the BuildKit one: the docker CLI run as an argv subprocess.

The docker SDK drives only the legacy builder (docker_engine.DockerEngine.build). Today's Dockerfiles
use BuildKit (``RUN --mount``, ``FROM --platform=$BUILDPLATFORM``, build secrets), which the engine
offers only through a BuildKit session the SDK cannot open; the docker CLI can, in one of two ways:
``docker buildx build`` when the buildx plugin is installed, or ``DOCKER_BUILDKIT=1 docker build`` with a
CLI older than 23.0, which embeds BuildKit's client (Debian's docker.io 20.10 does; 23.0 and later hand
``DOCKER_BUILDKIT=1`` to buildx and fail without it). So every ``docker`` on PATH is asked, and the
first that can is used; ``ORCH_DOCKER_CLI`` names one explicitly.

This module also reads Dockerfiles (pure functions, unit-tested): which BuildKit-only features one uses,
so that the legacy builder refuses it with a message naming the feature instead of a cryptic engine
error, and which base images it pulls, so that a registry the engine cannot reach is told apart from a
broken build.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from orchestrator.errors import DockerError, InfraUnavailable, StepTimeout


class BuilderKind(StrEnum):
    BUILDKIT = "buildkit"
    LEGACY = "legacy"


BUILDER_CHOICES = ("auto", BuilderKind.BUILDKIT.value, BuilderKind.LEGACY.value)

INSTALL_BUILDKIT = (
    "install the docker buildx plugin (Debian/Ubuntu: apt-get install docker-buildx-plugin, or "
    "docker-buildx), or point ORCH_DOCKER_CLI at a docker CLI older than 23.0 that embeds BuildKit "
    "(Debian's docker.io 20.10)"
)

# --------------------------------------------------------------------------------------------------
# reading Dockerfiles


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as ``instructions`` reads it, continuation lines joined: enough to find the
    BuildKit-only features it uses and the base images it pulls, named by the line it starts on."""

    keyword: str  # upper case: RUN, FROM, COPY, ...
    flags: tuple[str, ...]  # the leading --flags, as written (``--mount=type=cache,target=/x``)
    rest: str  # what follows the flags
    line: int  # 1-based line the instruction starts on


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(.*?)\s*$")
_HEREDOC = re.compile(r"<<-?\s*[\"']?[A-Za-z_][A-Za-z0-9_]*[\"']?")


def directives(text: str) -> dict[str, str]:
    """The parser directives (``# syntax=...``, ``# escape=...``): comment lines at the very top."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        match = _DIRECTIVE.match(raw.strip())
        if not match:
            break
        found[match.group(1).lower()] = match.group(2)
    return found


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions with continuation lines joined (honouring ``# escape=``);
    comments and blank lines dropped. Heredoc bodies are not parsed (only BuildKit reads them)."""
    escape = directives(text).get("escape", "\\")[:1] or "\\"
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith(escape):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        result.append(_instruction(" ".join(pending), start))
        pending = []
    if pending:
        result.append(_instruction(" ".join(pending), start))
    return result


def _instruction(line: str, number: int) -> Instruction:
    keyword, _, rest = line.partition(" ")
    flags: list[str] = []
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return Instruction(keyword.upper(), tuple(flags), rest, number)


def _flag_names(instruction: Instruction) -> set[str]:
    return {flag[2:].partition("=")[0].lower() for flag in instruction.flags}


def buildkit_features(text: str) -> list[str]:
    """The features of this Dockerfile the legacy builder cannot build, each named as a user would
    search for it (``RUN --mount`` on line 4)."""
    found: list[str] = []
    syntax = directives(text).get("syntax")
    if syntax:
        found.append(f"the '# syntax={syntax}' directive")
    for ins in instructions(text):
        names = _flag_names(ins)
        where = f" (line {ins.line})"
        if ins.keyword == "RUN":
            found += [f"RUN --{n}{where}" for n in ("mount", "network", "security") if n in names]
        if ins.keyword == "FROM" and "platform" in names:
            found.append(f"FROM --platform{where}")
        if ins.keyword in ("COPY", "ADD"):
            found += [
                f"{ins.keyword} --{n}{where}" for n in ("link", "chmod", "parents", "exclude") if n in names
            ]
        if ins.keyword in ("RUN", "COPY", "ADD") and _HEREDOC.search(ins.rest):
            found.append(f"a heredoc in {ins.keyword}{where}")
    return found


def newer_frontend_features(text: str) -> list[str]:
    """Features BuildKit's built-in Dockerfile frontend learnt in 1.4 (BuildKit 0.10, Docker 23): an
    engine older than that fails on them with "Unknown flag" unless a ``# syntax=`` frontend is used."""
    found: list[str] = []
    for ins in instructions(text):
        names = _flag_names(ins)
        where = f" (line {ins.line})"
        if ins.keyword in ("COPY", "ADD") and "link" in names:
            found.append(f"{ins.keyword} --link{where}")
        if ins.keyword in ("RUN", "COPY", "ADD") and _HEREDOC.search(ins.rest):
            found.append(f"a heredoc in {ins.keyword}{where}")
    return found


_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


def base_images(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """The images the Dockerfile pulls: every FROM that names neither ``scratch`` nor an earlier stage,
    with global ARGs (and ``build_args``) substituted, plus a ``# syntax=`` frontend image. A reference
    that still holds a variable after substitution is left out: it cannot be known here."""
    args: dict[str, str] = {}
    images: list[str] = []
    syntax = directives(text).get("syntax")
    if syntax:
        images.append(syntax)
    stages: set[str] = set()
    seen_from = False
    for ins in instructions(text):
        if ins.keyword == "ARG" and not seen_from:
            name, _, default = ins.rest.partition("=")
            args[name.strip()] = (build_args or {}).get(name.strip(), default.strip().strip("\"'"))
        if ins.keyword != "FROM":
            continue
        seen_from = True
        words = ins.rest.split()
        if not words:
            continue
        ref = _VAR.sub(lambda m: args.get(m.group(1) or m.group(2), m.group(0)), words[0])
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if "$" in ref or ref.lower() == "scratch" or ref.lower() in stages or ref in images:
            continue
        images.append(ref)
    return images


def registry_host(ref: str) -> str:
    """The registry an image reference is pulled from (Docker's rule: a first path component with a
    '.' or ':' or equal to 'localhost' is a host; anything else is Docker Hub)."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# What the engine (or BuildKit) says when a registry does not answer, as opposed to answering "no".
_UNREACHABLE = re.compile(
    r"dial tcp|connection refused|no such host|i/o timeout|network is unreachable|no route to host|"
    r"TLS handshake timeout|connection reset by peer|Client\.Timeout exceeded|temporary failure in name",
    re.IGNORECASE,
)


def unreachable_base_image(
    message: str, candidates: Sequence[str], present: Callable[[str], bool]
) -> tuple[str, str] | None:
    """(image, registry host) when a failed build's ``message`` says a registry could not be reached
    while pulling one of ``candidates`` (base images not already on the engine); None otherwise."""
    if not _UNREACHABLE.search(message):
        return None
    missing = [ref for ref in candidates if not present(ref)]
    for ref in missing:
        if ref in message or registry_host(ref) in message:
            return ref, registry_host(ref)
    if len(missing) == 1:
        return missing[0], registry_host(missing[0])
    return None


def unreachable_error(image: str, host: str, message: str) -> InfraUnavailable:
    line = next((ln for ln in reversed(message.splitlines()) if _UNREACHABLE.search(ln)), message)
    return InfraUnavailable(
        f"base image {image} could not be pulled: the Docker engine could not reach its registry {host} "
        f"({line.strip()[-300:]}). Nothing was decided about the commit: make the registry reachable from "
        f"the engine (or load the image into the engine with 'docker pull'/'docker load') and advance again",
        details={"image": image, "registry": host},
    )


# --------------------------------------------------------------------------------------------------
# finding a BuildKit-capable docker CLI


@dataclass(frozen=True)
class BuildKitCli:
    """How to run a BuildKit build here: ``argv`` + ``[options] <context>`` with ``env`` added."""

    path: str
    buildx: bool

    @property
    def argv(self) -> tuple[str, ...]:
        # --load: a buildx builder other than the default "docker" one keeps its result in its own store.
        return (self.path, "buildx", "build", "--load") if self.buildx else (self.path, "build")

    @property
    def env(self) -> dict[str, str]:
        return {} if self.buildx else {"DOCKER_BUILDKIT": "1"}

    def describe(self) -> str:
        return f"docker buildx ({self.path})" if self.buildx else f"DOCKER_BUILDKIT=1 {self.path} build"


def _answers(argv: Sequence[str]) -> str | None:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


_CLI_VERSION = re.compile(r"Docker version (\d+)\.(\d+)")


def _candidates(override: str | None) -> list[str]:
    if override:
        return [shutil.which(override) or override]
    found: list[str] = []
    seen: set[str] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("docker", path=folder) if folder else None
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


@functools.lru_cache(maxsize=8)
def _find(override: str | None, search_path: str) -> BuildKitCli | None:
    candidates = _candidates(override)
    key = json.dumps([override, _fingerprint(candidates)])
    cache = _ProbeCache()
    if (known := cache.get(key, candidates)) is not None:
        return known or None
    found = _probe(candidates)
    cache.put(key, found)
    return found


def _probe(candidates: Sequence[str]) -> BuildKitCli | None:
    for path in candidates:
        if _answers([path, "buildx", "version"]) is not None:
            return BuildKitCli(path, buildx=True)
    for path in candidates:
        version = _CLI_VERSION.search(_answers([path, "--version"]) or "")
        # 18.09 brought DOCKER_BUILDKIT=1; 23.0 moved it to the buildx plugin.
        if version and (18, 9) <= (int(version.group(1)), int(version.group(2))) < (23, 0):
            return BuildKitCli(path, buildx=False)
    return None


def _plugin_places() -> list[str]:
    """Where the docker CLI looks for plugins (buildx among them), and its config, which may add more."""
    config = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return [
        os.path.join(config, "cli-plugins"),
        os.path.join(config, "config.json"),
        *(f"/usr/{d}/docker/cli-plugins" for d in ("local/lib", "local/libexec", "lib", "libexec")),
    ]


def _fingerprint(candidates: Sequence[str]) -> list[list[object]]:
    """What the probe's answer depends on, read without running anything: each candidate CLI's file,
    and each place a buildx plugin could come from (installing or removing one changes its folder)."""
    found: list[list[object]] = []
    for path in [*candidates, *_plugin_places()]:
        try:
            st = os.stat(path)
        except OSError:
            found.append([path])
            continue
        found.append([path, st.st_ino, st.st_mtime_ns, st.st_size])
    return found


class _ProbeCache:
    """The answer of the docker CLI probe, kept across processes.

    Finding a BuildKit-capable CLI runs each candidate CLI once or twice (``buildx version``,
    ``--version``): 30-90 ms of subprocesses in every process that builds, before the staging build
    can be sent (issue 12). The answer changes only when a CLI or a plugin folder does, so it is kept
    under the fingerprint of those files (inode, mtime, size) in the user's cache directory; any other
    change asks again. A cache that cannot be read or written is only a slower start."""

    ENTRIES = 8

    def __init__(self) -> None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        self.path = os.path.join(base, "orchestrator", "docker-cli.json")

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, candidates: Sequence[str]) -> BuildKitCli | Literal[False] | None:
        """The kept answer (False: none of the candidates builds with BuildKit), or None: ask."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        if entry.get("path") is None:
            return False
        if entry["path"] not in candidates:  # only ever one of the CLIs found now
            return None
        return BuildKitCli(str(entry["path"]), buildx=bool(entry.get("buildx")))

    def put(self, key: str, found: BuildKitCli | None) -> None:
        data = self._read()
        data.pop(key, None)
        data[key] = {"path": found.path, "buildx": found.buildx} if found else {"path": None}
        data = dict(list(data.items())[-self.ENTRIES :])
        folder = os.path.dirname(self.path)
        import tempfile

        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".docker-cli-")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(temp, self.path)
        except OSError:
            return


def find_buildkit_cli(override: str | None = None) -> BuildKitCli | None:
    """The first docker CLI that builds with BuildKit (buildx first), or the one ``override`` names if it
    can; None when there is none. Asked once per process (and PATH)."""
    return _find(override, os.environ.get("PATH", ""))


# --------------------------------------------------------------------------------------------------
# a BuildKit build


@dataclass(frozen=True)
class Secret:
    """A build secret handed to BuildKit (``RUN --mount=type=secret,id=<id>``): from an environment
    variable of the orchestrator's process or from a file. Never a build arg, never on argv by value."""

    id: str
    env: str | None = None
    file: str | None = None

    def flag(self) -> str:
        return f"id={self.id},env={self.env}" if self.env else f"id={self.id},src={self.file}"


_ENGINE_DOWN = re.compile(
    r"Cannot connect to the Docker daemon|error during connect|Is the docker daemon running", re.IGNORECASE
)


def buildkit_argv(
    cli: BuildKitCli,
    *,
    iidfile: Path,
    context_dir: Path,
    dockerfile: Path,
    tag: str | None,
    build_args: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    target: str | None = None,
    secrets: Sequence[Secret] = (),
    engine_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """The command line (and environment) of the CLI's build of ``context_dir``, for CliBuild: its image
    id goes to ``iidfile``. Without ``tag`` the image is left unnamed (a build sent ahead,
    steps/ahead.py: the build step names the one it takes)."""
    program, *command = cli.argv
    argv = [
        program,
        *engine_args,
        *command,
        "--progress=plain",
        "--iidfile",
        str(iidfile),
        "-f",
        str(dockerfile),
    ]
    if tag is not None:
        argv += ["-t", tag]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    for secret in secrets:
        argv += ["--secret", secret.flag()]
    argv.append(str(context_dir))
    return argv, {**os.environ, **cli.env}


def buildkit_build(
    cli: BuildKitCli,
    *,
    context_dir: Path,
    dockerfile: Path,
    tag: str,
    build_args: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    target: str | None = None,
    secrets: Sequence[Secret] = (),
    timeout_s: float | None = None,
    on_line: Callable[[str], None] | None = None,
    engine_args: Sequence[str] = (),
) -> str:
    """Build ``context_dir`` with BuildKit, streaming its plain progress to ``on_line``; returns the image
    id the CLI wrote to ``--iidfile``. A failed build raises DockerError with the output as its log; an
    engine that does not answer, InfraUnavailable; past ``timeout_s``, the CLI is stopped (which cancels
    the build in the engine) and StepTimeout is raised with the end of the output. ``engine_args`` are
    the CLI's global flags that reach the build engine (``--host ssh://...``; none for this machine's),
    so the build lands on the engine the image is then read from."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="orchestrator-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        argv, env = buildkit_argv(
            cli,
            iidfile=iidfile,
            context_dir=context_dir,
            dockerfile=dockerfile,
            tag=tag,
            build_args=build_args,
            labels=labels,
            target=target,
            secrets=secrets,
            engine_args=engine_args,
        )
        running = CliBuild(argv, env, context_dir, tag, iidfile)
        running.attach(on_line)
        return running.finish(timeout_s)


def _last(text: str) -> str:
    """The line that says why a BuildKit build failed (its last non-empty one)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][-500:] if lines else "no output"


def cli_build_timeout(tag: str, timeout_s: float | None, started: float, lines: Sequence[str]) -> StepTimeout:
    """A CLI build past ``timeout_s`` (counted from ``started``), with the end of what it said."""
    tail = "".join("".join(lines).splitlines(keepends=True)[-20:])
    return StepTimeout(
        f"build of {tag} did not finish within {timeout_s:g} s (ORCH_BUILD_TIMEOUT_S)",
        details={
            "timeout_s": timeout_s,
            "setting": "ORCH_BUILD_TIMEOUT_S",
            "elapsed_s": round(time.monotonic() - started, 1),
            "log_tail": tail,
        },
    )


def cli_build_result(tag: str, code: int, text: str, iidfile: Path) -> str:
    """The image id a CLI build that exited with ``code`` wrote, or what went wrong, in its words."""
    if code != 0:
        if _ENGINE_DOWN.search(text):
            raise InfraUnavailable(f"Docker engine did not answer the build of {tag}: {_last(text)}")
        raise DockerError(f"build of {tag} failed: {_last(text)}", log=text)
    image_id = iidfile.read_text().strip() if iidfile.is_file() else ""
    if not image_id:
        raise DockerError(f"build of {tag} reported success but wrote no image id", log=text)
    return image_id


class CliBuild:
    """A build the docker CLI runs: started at once, its output collected as it comes (the CLI would
    block on a full pipe), and handed to whoever ``attach``es, the lines so far first, in the
    attaching caller's context (so log lines carry its run, app, sha and edge)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path, tag: str, iidfile: Path) -> None:
        self.tag = tag
        self.iidfile = iidfile
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._on_line: Callable[[str], None] | None = None
        self._context: contextvars.Context | None = None
        self._lock = threading.Lock()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=cwd,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise InfraUnavailable(f"could not run {argv[0]} for the build of {tag}: {exc}") from None
        self._reader = threading.Thread(target=self._pump, name=f"build-output-{tag}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._lock:
                self.lines.append(line)
                on_line, context = self._on_line, self._context
            if on_line is not None and context is not None:
                context.run(on_line, line.rstrip("\n"))

    def attach(self, on_line: Callable[[str], None] | None) -> None:
        """From now on each line goes to ``on_line``, in the attaching caller's context."""
        with self._lock:
            earlier = list(self.lines)
            self._on_line = on_line
            self._context = contextvars.copy_context()
        if on_line is not None:
            for line in earlier:
                on_line(line.rstrip("\n"))

    def finish(self, timeout_s: float | None) -> str:
        """Wait for the build (``timeout_s`` counted from its start) and return the image id it wrote."""
        remaining = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - self.started))
        try:
            code = self._proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise cli_build_timeout(self.tag, timeout_s, self.started, self.lines) from None
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise
        self._reader.join()
        return cli_build_result(self.tag, code, "".join(self.lines), self.iidfile)

    def cancel(self) -> None:
        """Stop the CLI: SIGTERM closes its session and the engine cancels the solve (nothing tagged)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# choosing


@dataclass(frozen=True)
class BuilderChoice:
    """The builder a build uses, and in words why (recorded with the build step)."""

    kind: BuilderKind
    cli: BuildKitCli | None
    why: str


def choose(
    setting: str, docker_cli: str | None, engine_supports_buildkit: Callable[[], bool]
) -> BuilderChoice:
    """``setting`` is Settings.builder: ``legacy``; ``buildkit`` (absent: exit 4 saying what to install);
    ``auto``: BuildKit when a docker CLI here drives it and the engine runs it, else the legacy builder."""
    if setting == BuilderKind.LEGACY:
        return BuilderChoice(BuilderKind.LEGACY, None, "ORCH_BUILDER=legacy")
    cli = find_buildkit_cli(docker_cli)
    if cli is not None and engine_supports_buildkit():
        return BuilderChoice(BuilderKind.BUILDKIT, cli, cli.describe())
    missing = (
        f"the Docker engine does not run BuildKit builds (it needs 18.09+ on Linux), found {cli.describe()}"
        if cli is not None
        else (
            f"ORCH_DOCKER_CLI={docker_cli} has neither buildx nor an embedded BuildKit"
            if docker_cli
            else "no docker CLI on PATH has buildx or an embedded BuildKit"
        )
    )
    if setting == BuilderKind.BUILDKIT:
        raise InfraUnavailable(f"ORCH_BUILDER=buildkit but {missing}: {INSTALL_BUILDKIT}")
    return BuilderChoice(BuilderKind.LEGACY, None, f"legacy builder: {missing}")
