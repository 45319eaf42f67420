"""Building what real Dockerfiles say (issue 11), on both builders and the real engine: a context in a
subdirectory, a target stage, build secrets, BuildKit-only features on the legacy builder, a base image
whose registry does not answer, and BuildKit's build timeout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from orchestrator.builders import find_buildkit_cli

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"
APP_LABEL = "orchestrator.tests.app"
SERVE = """\
bb=/bin/busybox
echo "$APP_REVISION" > /www/version
exec $bb httpd -f -p "127.0.0.1:$PORT" -h /www
"""


@pytest.fixture(params=["legacy", "buildkit"])
def builder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "buildkit" and find_buildkit_cli() is None:
        pytest.skip("no docker CLI here has buildx or an embedded BuildKit (docker.io 20.10)")
    monkeypatch.setenv("ORCH_BUILDER", request.param)
    return str(request.param)


@pytest.fixture
def buildkit(monkeypatch: pytest.MonkeyPatch) -> None:
    if find_buildkit_cli() is None:
        pytest.skip("no docker CLI here has buildx or an embedded BuildKit (docker.io 20.10)")
    monkeypatch.setenv("ORCH_BUILDER", "buildkit")


def configure(app: BusyboxApp, source: Path | None = None, **keys: Any) -> None:
    """orchestrator.toml for ``app`` with extra keys (TOML values given as Python values)."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items() if key != "secrets")
    if "secrets" in keys:
        pairs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in keys["secrets"].items())
        extra += f"secrets = {{ {pairs} }}\n"
    app.workspace.write_config(
        f"[orchestrator]\nhealth_timeout_s = {app.health_timeout_s}\n\n"
        f"[apps.{app.name}]\nsource = {json.dumps((source or app.repo.path).as_posix())}\n"
        'health_path = "/health"\nversion_path = "/version"\n'
        f"staging_port = {app.staging_port}\nprod_port = {app.prod_port}\n" + extra
    )


def commit_app(
    app: BusyboxApp, dockerfile: str, *, folder: str = "", extra: dict[str, str] | None = None
) -> str:
    """Commit an app whose Dockerfile and rootfs live in ``folder`` (busybox is copied there too)."""
    prefix = f"{folder}/" if folder else ""
    if folder:
        (app.repo.path / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(app.repo.path / "busybox", app.repo.path / folder / "busybox")
    files = {
        f"{prefix}Dockerfile": dockerfile,
        f"{prefix}rootfs/serve.sh": SERVE,
        f"{prefix}rootfs/www/health": "ok\n",
        f"{prefix}rootfs/www/index.html": f"{app.name}\n",
        **(extra or {}),
    }
    return app.repo.commit(f"app in {folder or 'the root'}", files)


def stamped(app: str, body: str) -> str:
    """A Dockerfile stage ending the way the orchestrator needs: revision label, APP_REVISION, CMD."""
    return (
        body + f"LABEL orchestrator.tests=1 {APP_LABEL}={app}\n"
        f"ARG GIT_SHA\nENV APP_REVISION=$GIT_SHA\nLABEL {REVISION_LABEL}=$GIT_SHA\n"
        'CMD ["/bin/busybox", "sh", "/serve.sh"]\n'
    )


def build_steps(app: BusyboxApp, run_id: int) -> list[dict[str, Any]]:
    shown = app.show(run_id)
    return [s for t in shown["transitions"] for s in t["steps"] if s["name"] == "build"]


# context and target -----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "web/Dockerfile"])
def test_a_context_in_a_subdirectory_and_a_target_stage(
    busybox_app: BusyboxApp, builder: str, dockerfile: str
) -> None:
    """The Dockerfile in ``web/`` copies paths relative to ``web/``; ``dockerfile`` is given relative to
    the context (as Docker reads it) or, as before ``context`` existed, to the repository root. The
    target stage is built, not the last one (which would serve a different page)."""
    app = busybox_app
    stages = stamped(app.name, "FROM scratch AS runtime\nCOPY busybox /bin/busybox\nCOPY rootfs /\n")
    stages += 'FROM runtime AS debug\nRUN ["/bin/busybox", "sh", "-c", "echo debug > /www/index.html"]\n'
    sha = commit_app(app, stages, folder="web", extra={"Dockerfile": "FROM scratch\nthis is not the one\n"})
    configure(app, context="web", dockerfile=dockerfile, target="runtime")
    run_id = app.start(sha)
    result = app.advance(run_id, "deploy-staging").ok()
    assert result["state"] == "deploy-staging"
    assert app.get("staging", "/index.html").body == f"{app.name}\n"
    (step,) = build_steps(app, run_id)
    assert (step["changes"]["builder"], step["changes"]["dockerfile"]) == (builder, "web/Dockerfile")


def test_an_app_whose_source_is_a_subdirectory_of_its_repository(
    busybox_app: BusyboxApp, builder: str
) -> None:
    """A monorepo: ``source`` points at ``services/web`` inside the repository. The Dockerfile there used to
    be reported as "not in commit" (git read the path against the repository root)."""
    app = busybox_app
    body = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY rootfs /\n"
    sha = commit_app(app, stamped(app.name, body), folder="services/web")
    configure(app, source=app.repo.path / "services" / "web")
    run_id = app.start(sha)
    assert app.advance(run_id, "deploy-staging").ok()["state"] == "deploy-staging"
    assert app.get("staging", "/version").body.strip() == sha


def test_buildkit_streams_its_progress_to_the_log(busybox_app: BusyboxApp, buildkit: None) -> None:
    app = busybox_app
    sha = commit_app(app, stamped(app.name, "FROM scratch\nCOPY busybox /bin/busybox\nCOPY rootfs /\n"))
    configure(app)
    result = app.advance(app.start(sha), "deploy-staging")
    result.ok()
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    progress = [line["line"] for line in lines if line.get("event") == "build_output"]
    assert any("COPY rootfs /" in line for line in progress), result.stderr[-3000:]
    assert all(
        line.get("run_id") and line.get("sha") == sha for line in lines if line.get("event") == "build_output"
    )


# secrets --------------------------------------------------------------------------------------------

SECRET = "s3cr3t-npm-token-0f9e8d7c"


def _secret_app(app: BusyboxApp) -> str:
    body = (
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY rootfs /\n"
        # Prints the secret (the build log must not keep it) and stores only its hash (the test's proof
        # that BuildKit delivered it).
        'RUN --mount=type=secret,id=npm ["/bin/busybox", "sh", "-c", '
        '"/bin/busybox cat /run/secrets/npm; echo; /bin/busybox sha256sum /run/secrets/npm > /www/npm.sha"]\n'
    )
    return commit_app(app, stamped(app.name, body))


def test_a_build_secret_reaches_the_build_and_nothing_else(
    busybox_app: BusyboxApp, buildkit: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``secrets = { npm = "env:NPM_TOKEN" }``: the RUN step reads it; it is not in ``docker history
    --no-trunc``, the image config, the database, ``runs show`` or the logs of the advance."""
    app = busybox_app
    monkeypatch.setenv("NPM_TOKEN", SECRET)
    sha = _secret_app(app)
    configure(app, secrets={"npm": "env:NPM_TOKEN"})
    run_id = app.start(sha)
    result = app.advance(run_id, "deploy-staging", as_json=True)
    result.ok()
    delivered = app.get("staging", "/npm.sha").body.split()[0]
    assert delivered == hashlib.sha256(SECRET.encode()).hexdigest()

    image = app.running("staging")
    assert image is not None
    history = subprocess.run(
        ["docker", "history", "--no-trunc", image.image_id], capture_output=True, text=True, check=True
    ).stdout
    inspect = subprocess.run(
        ["docker", "image", "inspect", image.image_id], capture_output=True, text=True, check=True
    ).stdout
    assert "/run/secrets/npm" in history, "the step is in the history, without the value"
    engine = sa.create_engine(app.workspace.db_url)
    try:
        with engine.connect() as conn:
            stored = "".join(
                str(conn.execute(sa.text(f'SELECT * FROM "{t}"')).fetchall())
                for t in sa.inspect(conn).get_table_names()
            )
    finally:
        engine.dispose()
    shown = app.cli("runs", "show", run_id).stdout + json.dumps(app.show(run_id))
    for where, text in {
        "history": history,
        "image config": inspect,
        "database": stored,
        "runs show": shown,
        "advance output": result.stdout + result.stderr,
    }.items():
        assert SECRET not in text, f"the secret is in the {where}"
    assert "***" in result.stderr, "the build printed the secret and the log masked it"


def test_build_secrets_need_buildkit_exit_2(busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = busybox_app
    monkeypatch.setenv("NPM_TOKEN", SECRET)
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    sha = _secret_app(app)
    configure(app, secrets={"npm": "env:NPM_TOKEN"})
    run_id = app.start(sha)
    message = app.advance(run_id, "deploy-staging").error(2, "bad_input")
    assert f"[apps.{app.name}].secrets (npm) need BuildKit" in message, message
    assert app.show(run_id)["transitions"] == []


def test_a_secret_whose_variable_is_not_set_is_exit_2(busybox_app: BusyboxApp, buildkit: None) -> None:
    app = busybox_app
    sha = _secret_app(app)
    configure(app, secrets={"npm": "env:ORCHTEST_UNSET_TOKEN"})
    message = app.advance(app.start(sha), "deploy-staging").error(2, "bad_input")
    assert "environment variable ORCHTEST_UNSET_TOKEN is not set" in message


# BuildKit-only Dockerfiles on the legacy builder --------------------------------------------------

MOUNTING = (
    'FROM scratch\nCOPY busybox /bin/busybox\nRUN --mount=type=cache,target=/c ["/bin/busybox", "true"]\n'
)


def test_legacy_builder_by_setting_refuses_a_buildkit_dockerfile_exit_2(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = busybox_app
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    sha = commit_app(app, stamped(app.name, MOUNTING + "COPY rootfs /\n"))
    configure(app)
    message = app.advance(app.start(sha), "deploy-staging").error(2, "bad_input")
    assert message == (
        "Dockerfile uses RUN --mount (line 3), which only BuildKit builds, but ORCH_BUILDER=legacy: set it "
        "to auto or buildkit"
    )


def _cli_without_buildkit() -> str | None:
    """A real docker CLI here that cannot drive BuildKit (23.0+ without the buildx plugin)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("docker", path=folder) if folder else None
        if path and find_buildkit_cli(path) is None:
            return path
    return None


def test_where_buildkit_is_absent_a_buildkit_dockerfile_says_what_to_install_exit_4(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _cli_without_buildkit()
    if cli is None:
        pytest.skip("every docker CLI here drives BuildKit: no machine without it to imitate")
    app = busybox_app
    monkeypatch.setenv("ORCH_DOCKER_CLI", cli)
    sha = commit_app(app, stamped(app.name, MOUNTING + "COPY rootfs /\n"))
    configure(app)
    run_id = app.start(sha)
    message = app.advance(run_id, "deploy-staging").error(4, "infrastructure_unavailable")
    assert message.startswith(
        f"Dockerfile uses RUN --mount (line 3), which only BuildKit builds, and this machine has only the "
        f"legacy builder: ORCH_DOCKER_CLI={cli} has neither buildx nor an embedded BuildKit: install the "
        "docker buildx plugin"
    ), message
    assert app.show(run_id)["transitions"] == []


def test_without_buildkit_a_classic_dockerfile_falls_back_to_the_legacy_builder(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _cli_without_buildkit()
    if cli is None:
        pytest.skip("every docker CLI here drives BuildKit: no machine without it to imitate")
    app = busybox_app
    monkeypatch.setenv("ORCH_DOCKER_CLI", cli)
    sha = commit_app(app, stamped(app.name, "FROM scratch\nCOPY busybox /bin/busybox\nCOPY rootfs /\n"))
    configure(app)
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    (step,) = build_steps(app, run_id)
    assert step["changes"]["builder"] == "legacy"
    assert "has neither buildx nor an embedded BuildKit" in step["changes"]["builder_why"]


# infrastructure ---------------------------------------------------------------------------------


def test_a_base_image_whose_registry_does_not_answer_is_exit_4(
    busybox_app: BusyboxApp, builder: str, free_port: Any
) -> None:
    app = busybox_app
    image = f"127.0.0.1:{free_port()}/orch-test/base:1"
    sha = commit_app(app, stamped(app.name, f"FROM {image}\nCOPY rootfs /\n"))
    configure(app)
    run_id = app.start(sha)
    result = app.advance(run_id, "deploy-staging")
    message = result.error(4, "infrastructure_unavailable")
    registry = image.split("/")[0]
    assert message.startswith(
        f"base image {image} could not be pulled: the Docker engine could not reach its registry {registry} ("
    ), message
    assert "connection refused" in message
    assert app.show(run_id)["state"] == "development"
    assert app.tagged(sha) is None


def test_a_build_past_its_timeout_is_cancelled_exit_4(
    busybox_app: BusyboxApp, builder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either builder, with the build started ahead of the edge (steps/build.py BuildAhead): the limit
    counts from when it was started, and the cancelled build names no image."""
    app = busybox_app
    monkeypatch.setenv("ORCH_BUILD_TIMEOUT_S", "2")
    body = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sleep", "6"]\nCOPY rootfs /\n'
    sha = commit_app(app, stamped(app.name, body))
    configure(app)
    started = time.monotonic()
    message = app.advance(app.start(sha), "deploy-staging").error(4, "timeout")
    assert message.startswith(f"build of {app.name}:{sha} did not finish within 2 s (ORCH_BUILD_TIMEOUT_S)")
    time.sleep(max(0.0, 8 - (time.monotonic() - started)))
    assert app.tagged(sha) is None, "the cancelled build tagged nothing, even after its RUN would have ended"
    assert not re.search(
        rf"{app.name}", subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    )
