"""parking.py without an engine: how a parked build is named, read, found lost and swept.

The engine's side (a real build parked by `run start` and taken by the staging advance) is in
tests/integration/test_build_parked.py; here the files a park's process writes are written by the test,
and the process holding a park is a real `sleep`, so liveness is the kernel's answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import parking
from orchestrator.docker_wire import BuildRefused
from orchestrator.errors import DockerError, StepTimeout
from orchestrator.holder import process


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for a park's holder (cat, or the CLI's wrapper): its own session."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _park(root: Path, name: str, holder: subprocess.Popen[bytes] | None, **ticket: Any) -> Path:
    path = root / name
    path.mkdir(parents=True)
    about = process(holder.pid) if holder is not None else None
    data = {
        "sha": "a" * 40,
        "parked_at": time.time(),
        "holder": {"host": about.host, "pid": about.pid, "start": about.start} if about else None,
        **ticket,
    }
    (path / parking.TICKET).write_text(json.dumps(data))
    return path


def _chunked(*messages: dict[str, Any], status: str = "200 OK", end: bool = True) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b""
    for message in messages:
        data = (json.dumps(message) + "\r\n").encode()
        body += f"{len(data):x}\r\n".encode() + data + b"\r\n"
    return head.encode() + body + (b"0\r\n\r\n" if end else b"")


def test_a_park_is_named_by_run_and_database() -> None:
    one = parking.key("sqlite:///a.db", 7)
    assert one == parking.key("sqlite:///a.db", 7)
    assert one != parking.key("sqlite:///b.db", 7)
    assert one != parking.key("sqlite:///a.db", 8)


def test_the_request_is_recorded_as_json_reads_it_back() -> None:
    from orchestrator.builders import BuilderKind, BuildKitCli
    from orchestrator.steps.build import BuildRequest

    request = BuildRequest(
        "a" * 40, ".", "Dockerfile", (("GIT_SHA", "a" * 40),), None, BuilderKind.BUILDKIT,
        BuildKitCli("/usr/bin/docker", buildx=False), (),
    )  # fmt: skip
    recorded = json.loads(json.dumps(parking.plain(request)))
    assert recorded == parking.plain(request)
    other = BuildRequest(
        "a" * 40, ".", "Dockerfile", (("GIT_SHA", "b" * 40),), None, BuilderKind.BUILDKIT,
        BuildKitCli("/usr/bin/docker", buildx=False), (),
    )  # fmt: skip
    assert recorded != parking.plain(other)


def test_the_engine_answer_is_read_as_it_is_copied(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Messages are handed on while the holder still writes; the engine's end of the answer ends it."""
    park = _park(tmp_path, "run-1", sleeper, socket_path="/run/docker.sock")
    answer = _chunked({"stream": "Step 1/2"}, {"stream": "Step 2/2"}, {"aux": {"ID": "sha256:abc"}})
    response = park / parking.RESPONSE
    response.write_bytes(answer[:70])

    def write_the_rest() -> None:
        time.sleep(0.2)
        with open(response, "ab") as f:
            f.write(answer[70:])

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    build = parking.ParkedEngineBuild(parking.Parked.at(park))
    got = list(build.messages(lambda: 5.0))
    writer.join()
    assert got == [{"stream": "Step 1/2"}, {"stream": "Step 2/2"}, {"aux": {"ID": "sha256:abc"}}]
    assert build.socket_path == "/run/docker.sock"


def test_an_answer_cut_short_by_a_dead_holder_is_a_lost_park(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    park = _park(tmp_path, "run-1", sleeper)
    (park / parking.RESPONSE).write_bytes(_chunked({"stream": "Step 1/2"}, end=False))
    sleeper.kill()
    sleeper.wait()
    got: list[dict[str, Any]] = []
    with pytest.raises(parking.ParkLost):
        for message in parking.ParkedEngineBuild(parking.Parked.at(park)).messages(lambda: 5.0):
            got.append(message)
    assert got == [{"stream": "Step 1/2"}], "what came before the cut is still shown"


def test_a_refused_build_is_the_engine_refusal(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    park = _park(tmp_path, "run-1", sleeper)
    body = b'{"message":"dockerfile parse error"}'
    (park / parking.RESPONSE).write_bytes(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with pytest.raises(BuildRefused, match="500: dockerfile parse error"):
        list(parking.ParkedEngineBuild(parking.Parked.at(park)).messages(lambda: 5.0))


def test_waiting_on_an_answer_is_bounded_by_the_build_deadline(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    park = _park(tmp_path, "run-1", sleeper)
    (park / parking.RESPONSE).write_bytes(b"")
    deadline = time.monotonic() + 0.2

    def wait_s() -> float:
        if time.monotonic() > deadline:
            raise TimeoutError("the build's time is up")
        return deadline - time.monotonic()

    with pytest.raises(TimeoutError):
        list(parking.ParkedEngineBuild(parking.Parked.at(park)).messages(wait_s))


def test_a_cli_build_is_its_exit_status_and_image_id(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    park = _park(tmp_path, "run-1", sleeper)
    (park / parking.OUTPUT).write_text("#1 building\n#2 done")
    (park / parking.IID).write_text("sha256:feed\n")
    (park / parking.RC).write_text("0\n")
    shown: list[str] = []
    build = parking.ParkedCliBuild(parking.Parked.at(park), "app:sha")
    build.attach(shown.append)
    assert build.finish(60) == "sha256:feed"
    assert shown == ["#1 building", "#2 done"]
    assert not park.exists(), "a park read to its end is removed"


def test_a_failed_cli_build_says_why(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    park = _park(tmp_path, "run-1", sleeper)
    (park / parking.OUTPUT).write_text("#5 RUN false\nERROR: process did not complete successfully\n")
    (park / parking.RC).write_text("1\n")
    with pytest.raises(DockerError, match="did not complete successfully") as raised:
        parking.ParkedCliBuild(parking.Parked.at(park), "app:sha").finish(60)
    assert "RUN false" in raised.value.log


def test_a_cli_build_whose_wrapper_died_is_a_lost_park(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    park = _park(tmp_path, "run-1", sleeper)
    (park / parking.OUTPUT).write_text("#1 building\n")
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(parking.ParkLost):
        parking.ParkedCliBuild(parking.Parked.at(park), "app:sha").finish(60)


def test_a_cli_build_past_its_time_is_ended(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    park = _park(tmp_path, "run-1", sleeper, sent_at=time.time() - 5)
    (park / parking.OUTPUT).write_text("#1 still building\n")
    with pytest.raises(StepTimeout, match="did not finish within 2 s"):
        parking.ParkedCliBuild(parking.Parked.at(park), "app:sha").finish(2)
    assert sleeper.wait(timeout=5) is not None, "the timed-out build's process group was ended"
    assert not park.exists()


def test_parks_nobody_took_are_swept_once_no_build_can_still_run(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    now = time.time()
    old = _park(tmp_path, "park-old", sleeper, parked_at=now - 7200)
    (tmp_path / "run-1").symlink_to("park-old")
    recent = _park(tmp_path, "park-recent", None, parked_at=now - 60)
    (tmp_path / "run-2").symlink_to("park-recent")
    unfinished_old = tmp_path / "park-unfinished-old"  # a `run start` that died before handing it over
    unfinished_old.mkdir()
    os.utime(unfinished_old, (now - 7200, now - 7200))
    unfinished_new = tmp_path / "park-unfinished-new"
    unfinished_new.mkdir()
    removed = parking.sweep(tmp_path, older_than_s=3600, now=now)
    assert sorted(removed) == ["park-old", "park-unfinished-old", "run-1"]
    assert not old.exists() and not unfinished_old.exists()
    assert recent.exists() and unfinished_new.exists() and (tmp_path / "run-2").exists()
    assert sleeper.wait(timeout=5) is not None, "the swept park's process was ended"
    later = now + parking.UNFINISHED_S + 10
    assert sorted(parking.sweep(tmp_path, older_than_s=3600, now=later)) == [
        "park-recent",
        "park-unfinished-new",
        "run-2",
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_park_is_named_for_its_run_once_whole(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A park made for a run: its ticket written, then the run's name made to point at it; a park of
    the same name left by another database's run is ended first. Claimed once."""
    stale = _park(tmp_path, "park-stale", sleeper, sha="b" * 40)
    (tmp_path / "run-1").symlink_to("park-stale")
    park = parking.Park(tmp_path)
    park.start_cli(
        ["sh", "-c", f"echo built; echo sha256:cafe > {park.path / parking.IID}"], {"PATH": "/usr/bin:/bin"}
    )
    park.hand_over("run-1", {"sha": "a" * 40})
    assert not stale.exists() and sleeper.wait(timeout=5) is not None, "the stale park was ended"
    found = parking.Parked.claim(tmp_path, "run-1")
    assert found is not None and found.path == park.path
    assert found.ticket["sha"] == "a" * 40 and found.ticket["kind"] == parking.CLI
    assert parking.Parked.claim(tmp_path, "run-1") is None, "a park is claimed once"
    assert parking.ParkedCliBuild(found, "app:sha").finish(60) == "sha256:cafe"
    assert list(tmp_path.iterdir()) == []
