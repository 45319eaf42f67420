"""DockerEngine against the real engine: build from an in-memory context, labels, run, logs, remove.

A mock of Docker proves nothing about Docker: these are the calls every deploy gate stands on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest

from orchestrator.docker_engine import DockerEngine, DockerError, ImageInfo
from orchestrator.errors import InfraUnavailable

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"
SHA = "0123456789abcdef0123456789abcdef01234567"

BuildImage = Callable[..., ImageInfo]


def wait_for_log(engine: DockerEngine, name: str, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = engine.logs(name)
        if text in logs:
            return logs
        time.sleep(0.05)
    pytest.fail(f"{text!r} never appeared in the logs of {name} within {timeout}s: {logs!r}")


def test_build_stamps_the_revision_label(engine: DockerEngine, busybox_image: BuildImage) -> None:
    """The GIT_SHA build arg must come out as the OCI revision label: promotion trusts nothing else."""
    image = busybox_image(SHA)
    assert image.id.startswith("sha256:") and len(image.id) == len("sha256:") + 64
    assert image.label(REVISION_LABEL) == SHA
    assert image.size > 0

    inspected = engine.image(image.id)
    assert inspected is not None
    assert inspected.id == image.id
    assert inspected.label(REVISION_LABEL) == SHA
    assert set(inspected.tags) == set(image.tags) and len(image.tags) == 1
    by_tag = engine.image(image.tags[0])
    assert by_tag is not None and by_tag.id == image.id


def test_build_without_git_sha_leaves_the_label_empty(busybox_image: BuildImage) -> None:
    """What the fail-closed revision check must catch: an image built without the build arg."""
    image = busybox_image(None)
    assert image.label(REVISION_LABEL) in ("", None)


def test_build_labels_argument_is_applied(busybox_image: BuildImage) -> None:
    image = busybox_image(SHA, labels={"orchestrator.run": "41"})
    assert image.label("orchestrator.run") == "41"
    assert image.label(REVISION_LABEL) == SHA


def test_failed_build_is_a_docker_error_with_the_log(busybox_image: BuildImage) -> None:
    """A broken Dockerfile is a verdict on the commit (gate fails with evidence), not an outage."""
    broken = "FROM scratch\nCOPY busybox /bin/busybox\nRUN /bin/busybox false\n"
    with pytest.raises(DockerError) as excinfo:
        busybox_image(SHA, dockerfile=broken)
    assert "build of" in excinfo.value.message and "failed" in excinfo.value.message
    assert "Step" in excinfo.value.log


def test_image_lookup_of_an_unknown_ref_is_none(
    engine: DockerEngine, unique_name: Callable[[str], str]
) -> None:
    assert engine.image(f"{unique_name('absent')}:nope") is None
    assert engine.image("sha256:" + "0" * 64) is None


def test_run_logs_and_remove_a_container_with_host_networking(
    engine: DockerEngine,
    busybox_image: BuildImage,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    busybox_command: Callable[[str], Sequence[str]],
) -> None:
    image = busybox_image(SHA)
    name = unique_name("run")
    docker_cleanup(container=name)

    info = engine.run(
        name,
        image.id,
        command=list(busybox_command("echo hello from $ORCH_ENVIRONMENT; exec /bin/busybox sleep 30")),
        environment={"ORCH_ENVIRONMENT": "staging"},
        labels={"orchestrator.tests": "1"},
        host_network=True,
    )
    assert info.name == name
    assert info.image_id == image.id, "the container must run the exact image id we built"
    assert info.running, info.status
    assert info.labels["orchestrator.tests"] == "1"

    looked_up = engine.container(name)
    assert looked_up is not None and looked_up.id == info.id and looked_up.running

    assert "hello from staging" in wait_for_log(engine, name, "hello from staging")

    assert engine.remove_container(name) is True
    assert engine.container(name) is None
    assert engine.remove_container(name) is False, "removing twice must be a no-op, not an error"
    assert engine.logs(name) == ""

    engine.remove_image(image.id, force=True)
    assert engine.image(image.id) is None
    engine.remove_image(image.id, force=True)  # already gone: no error


def test_container_exit_code(
    engine: DockerEngine,
    busybox_image: BuildImage,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    busybox_command: Callable[[str], Sequence[str]],
) -> None:
    image = busybox_image(SHA)
    name = unique_name("exit")
    docker_cleanup(container=name)
    engine.run(name, image.id, command=list(busybox_command("exit 3")))
    assert engine.wait(name, timeout=30) == 3
    stopped = engine.container(name)
    assert stopped is not None and not stopped.running and stopped.exit_code == 3


def test_name_already_taken_is_a_docker_error(
    engine: DockerEngine,
    busybox_image: BuildImage,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
) -> None:
    image = busybox_image(SHA)
    name = unique_name("dup")
    docker_cleanup(container=name)
    engine.run(name, image.id)
    with pytest.raises(DockerError, match=name):
        engine.run(name, image.id)


def test_run_of_an_image_the_engine_does_not_have_is_a_docker_error(
    engine: DockerEngine, unique_name: Callable[[str], str], docker_cleanup: Callable[..., None]
) -> None:
    """An image pruned (or never pulled) between the check and the start is a refusal that names the
    image, not the SDK's ImageNotFound escaping as a traceback; and no container is left behind."""
    name = unique_name("noimage")
    docker_cleanup(container=name)
    missing = "sha256:" + "0" * 64
    with pytest.raises(DockerError, match=r"sha256:0{12}.*not on this engine"):
        engine.run(name, missing)
    assert engine.container(name) is None


def test_tag_points_a_second_name_at_the_same_image(
    engine: DockerEngine,
    busybox_image: BuildImage,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
) -> None:
    """Promotion retags the checked image (build once); the retag must be the identical image id."""
    image = busybox_image(SHA)
    repo = unique_name("retag")
    docker_cleanup(image=f"{repo}:prod")
    engine.tag(image.id, repo, "prod")
    retagged = engine.image(f"{repo}:prod")
    assert retagged is not None and retagged.id == image.id


def test_unreachable_engine_is_infra_unavailable() -> None:
    """Exit 4 with what to do, not a traceback and not a failed gate."""
    with pytest.raises(InfraUnavailable) as excinfo:
        DockerEngine.connect(base_url="unix:///nonexistent/docker.sock", timeout=5)
    exc = excinfo.value
    assert exc.exit_code == 4
    assert exc.message.startswith("Docker engine is unreachable at unix:///nonexistent/docker.sock")
    assert "Start it" in exc.message and "try again" in exc.message


def test_a_container_killed_while_its_successor_is_made_hands_over_its_name(
    engine: DockerEngine,
    busybox_image: BuildImage,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    busybox_command: Callable[[str], Sequence[str]],
) -> None:
    """The steps a direct promotion replaces a container with (runtimes/direct.py): the old one is killed
    while the new one is created under another name, renamed away, and removed while the new one starts
    under its name. A killed container with a restart policy stays stopped (the engine counts it as
    stopped by hand), so it cannot take the port back."""
    image = busybox_image(SHA)
    name, successor, retired = unique_name("handover"), unique_name("next"), unique_name("retired")
    for each in (name, successor, retired):
        docker_cleanup(container=each)
    sleep = list(busybox_command("exec /bin/busybox sleep 60"))
    old = engine.run(name, image.id, command=sleep, restart=True)
    assert old.running

    created = engine.together(
        lambda: engine.kill_container(name), lambda: engine.create(successor, image.id, command=sleep)
    )
    killed = engine.container(name)
    assert killed is not None and not killed.running, "kill returns once the container has stopped"
    time.sleep(1.5)
    killed = engine.container(name)
    assert killed is not None and not killed.running, "the restart policy brought a killed container back"
    assert engine.kill_container(name) is True, "killing a stopped container is what was asked"

    assert engine.rename_container(old.id, retired) is True
    assert engine.rename_container(created, name) is True
    started = engine.together(
        lambda: engine.remove_container(retired), lambda: engine.start_created(created, name)
    )
    assert (started.id, started.name, started.running) == (created, name, True)
    assert engine.container(retired) is None
    assert engine.kill_container(retired) is False and engine.rename_container(retired, successor) is False


def test_both_halves_run_to_their_end_and_the_first_error_is_raised(
    engine: DockerEngine,
    busybox_image: BuildImage,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
) -> None:
    image = busybox_image(SHA)
    name = unique_name("together")
    docker_cleanup(container=name)

    def refused() -> None:
        raise DockerError("first refused")

    with pytest.raises(DockerError, match="first refused"):
        engine.together(refused, lambda: engine.create(name, image.id))
    made = engine.container(name)
    assert made is not None and made.status == "created", "the second half ran although the first failed"
