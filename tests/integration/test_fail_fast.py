"""Failing fast, and saying why (issue 11), through the real CLI on the real engine.

A container that exits or restarts while the health check waits must end the wait at once (not after the
whole health timeout, which for a crash-looping prod release is that much prod downtime), with its exit
code and the end of its log in the gate's reason; nothing listening on the health port must say so and
point at PORT; a failed staging container is stopped but kept for ``docker logs``; and `advance` says
which gate failed, why, and what was done about prod, in plain lines and in --json.

The health timeout here is long (``LONG``): a wait that is not cut short by the container's death would
run into it and fail the assertions on the reason, so no test needs a clock to prove "at once".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import BusyboxApp, ComposeApp

pytestmark = pytest.mark.docker

LONG = 60.0  # seconds: a health wait that runs into this has not failed fast
SECRET = "hunter2-not-for-logs"
LOG_HEADER = "--- last 20 log lines of "

# Runs before the app (as the image's ENTRYPOINT, the app's CMD as its arguments): in the environments
# listed in the image's CRASH_IN it prints 25 numbered lines, a secret and a fatal line, and exits 3.
# PORT_OVERRIDE instead makes the app listen on another port than the PORT it is given.
_WRAPPER = """\
# Written by the test suite.
case " $CRASH_IN " in *" $ORCH_ENVIRONMENT "*)
  i=1
  while [ $i -le 25 ]; do echo "crash log line $i"; i=$((i + 1)); done
  echo "DB_PASSWORD=$SECRET_VALUE"
  echo "fatal: cannot open the database"
  exit 3;;
esac
if [ -n "$PORT_OVERRIDE" ]; then export PORT="$PORT_OVERRIDE"; fi
exec "$@"
"""


def commit_broken(app: BusyboxApp, message: str, *, crash_in: str = "", port_override: int = 0) -> str:
    """A commit of the busybox app wrapped in _WRAPPER (crashing in ``crash_in``, or listening on
    ``port_override`` instead of PORT)."""
    app.repo.commit(f"{message}: wrapper", {"rootfs/wrapper.sh": _WRAPPER})
    extra = (
        f'ENV CRASH_IN="{crash_in}" SECRET_VALUE="{SECRET}" PORT_OVERRIDE="{port_override or ""}"\n'
        'ENTRYPOINT ["/bin/busybox", "sh", "/wrapper.sh"]\n'
    )
    return app.commit(message, extra=extra)


def log_lines(reason: str) -> list[str]:
    """The log lines a reason carries (after its header line)."""
    _, sep, tail = reason.partition(LOG_HEADER)
    assert sep, f"no log in the reason: {reason!r}"
    return tail.splitlines()[1:]


def assert_crash_evidence(reason: str, container: str) -> None:
    """Exit code 3, the last 20 lines of the container's log, redacted."""
    first = reason.splitlines()[0]
    assert f"{container} exited with code 3" in first, reason
    assert "not healthy after" not in reason, "the wait ran into the health timeout"
    assert f"{LOG_HEADER}{container}" in reason, reason
    lines = log_lines(reason)
    expected = [f"crash log line {n}" for n in range(8, 26)]
    assert lines == [*expected, "DB_PASSWORD=***", "fatal: cannot open the database"], lines
    assert SECRET not in reason, "the secret is redacted"


def check_of(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in payload["checks"] if c["name"] == name)


# staging ------------------------------------------------------------------------------------------


def test_crashing_staging_fails_at_once_with_exit_code_and_log_and_is_stopped_but_kept(
    busybox_app: BusyboxApp,
) -> None:
    """Hazard: a staging container that dies at start costs the whole health timeout and the operator
    gets "not healthy after 60s" with no cause; or the dead container is removed and takes its log."""
    app = busybox_app
    app.configure(health_timeout_s=LONG)
    a_run = app.deploy(app.commit("release A"))
    prod_before = app.running("prod")
    sha = commit_broken(app, "release B crashes", crash_in="staging prod")
    run_id = app.start(sha)

    result = app.advance(run_id, "deploy-staging")
    assert result.exit_code == 1, result.describe()
    payload = result.payload
    check = check_of(payload, "deploy_staging")
    assert check["status"] == "fail"
    assert_crash_evidence(check["reason"], f"{app.name}-staging")
    assert check["details"]["exit_code"] == 3
    assert check["details"]["health"]["container_failure"], check["details"]["health"]

    failure = payload["failure"]
    assert failure["gate"] == "deploy_staging"
    assert failure["reason"] == check["reason"]
    assert failure["container"] == f"{app.name}-staging" and failure["exit_code"] == 3
    assert failure["prod"] == {"action": "untouched", "release_id": None, "summary": "untouched"}

    staging = app.engine.container(f"{app.name}-staging")
    assert staging is not None, "the failed staging container is kept for 'docker logs'"
    assert staging.status == "exited", staging
    assert "fatal: cannot open the database" in app.engine.logs(staging.id, tail=5)
    assert app.running("prod") == prod_before
    assert app.show(a_run)["state"] == "deploy"

    # The same failure in plain lines: the gate, the reason with the log, what happened to prod.
    human = app.advance(run_id, "deploy-staging", as_json=False)
    assert human.exit_code == 1, human.describe()
    out = human.stdout.splitlines()
    summary = f"run {run_id}: development -> deploy-staging FAILED, back in development: deploy_staging: "
    assert sum(line.startswith(summary) for line in out) == 1, out
    assert "  gate:   deploy_staging" in out
    (reason_at,) = [i for i, line in enumerate(out) if line.startswith("  reason: ")]
    assert f"{app.name}-staging exited with code 3" in out[reason_at]
    assert out[reason_at + 1].strip().startswith(LOG_HEADER)
    assert "fatal: cannot open the database" in [line.strip() for line in out[reason_at + 2 : reason_at + 22]]
    assert out[-1] == "  prod:   untouched", out
    assert SECRET not in human.stdout
    # The table of checks shows each reason's first line only; the log is printed once.
    assert human.stdout.count("fatal: cannot open the database") == 1, human.stdout

    # runs show keeps the same evidence, indented under its check.
    shown = app.cli("runs", "show", run_id)
    assert shown.exit_code == 0, shown.describe()
    assert shown.stdout.count("fatal: cannot open the database") >= 1
    assert SECRET not in shown.stdout
    for line in shown.stdout.splitlines():
        assert not line.startswith("crash log line"), "continuation lines are indented"
    recorded = app.show(run_id)["transitions"][-1]
    assert recorded["reason"].splitlines()[0].startswith("deploy_staging: ")
    assert "fatal: cannot open the database" in recorded["reason"]


def test_nothing_listening_on_port_says_so_and_hints_at_port(
    busybox_app: BusyboxApp, free_port: Callable[[], int]
) -> None:
    """Hazard: an app that listens on its own port (8000, say) instead of the PORT it is given, reported
    as "not healthy (ConnectionRefusedError)", which sends the operator to the wrong place."""
    app = busybox_app
    app.configure(health_timeout_s=2)
    elsewhere = free_port()
    sha = commit_broken(app, "listens on its own port", port_override=elsewhere)
    run_id = app.start(sha)

    result = app.advance(run_id, "deploy-staging")
    assert result.exit_code == 1, result.describe()
    check = check_of(result.payload, "deploy_staging")
    first = check["reason"].splitlines()[0]
    assert f"nothing answered on 127.0.0.1:{app.staging_port}" in first, first
    assert f"while {app.name}-staging kept running" in first, first
    assert f"PORT it is given (PORT={app.staging_port})" in first, first
    assert "container_port" in first, first
    assert check["details"]["container_status"] == "running", "it was running while we waited"
    staging = app.engine.container(f"{app.name}-staging")
    assert staging is not None and staging.status == "exited", "stopped after failing, and kept"
    assert result.payload["failure"]["prod"]["action"] == "untouched"


def test_crash_looping_compose_staging_fails_at_once_and_stops_restarting(
    compose_app: ComposeApp,
) -> None:
    """Compose services too: a staging service with ``restart: unless-stopped`` that crashes at start
    is restarted by the engine forever. The wait must end at the first exit or restart, with the exit
    code and log, and the service's container must be stopped (not left restarting), kept."""
    app = compose_app
    busy = app.app
    busy.health_timeout_s = LONG
    text = "services:\n" + "".join(
        f"  {service}:\n"
        f"    image: {json.dumps(f'{busy.name}:{tag}')}\n"
        "    network_mode: host\n"
        "    restart: unless-stopped\n"
        "    environment:\n"
        f'      PORT: "{port}"\n'
        f"      ORCH_ENVIRONMENT: {env}\n"
        "    stop_grace_period: 1s\n"
        for service, env, tag, port in (
            (app.staging_service, "staging", "staging", busy.staging_port),
            (app.prod_service, "prod", "latest", busy.prod_port),
        )
    )
    busy.repo.commit("compose file", {"docker-compose.yml": text})
    app.configure()
    sha = commit_broken(busy, "release crashes", crash_in="staging")
    run_id = busy.start(sha)

    result = busy.advance(run_id, "deploy-staging")
    assert result.exit_code == 1, result.describe()
    check = check_of(result.payload, "deploy_staging")
    staging = app.running("staging")
    assert staging is not None
    name = check["details"]["container"]
    assert_crash_evidence(check["reason"], name)
    assert staging.status == "exited", f"stopped, not left restarting: {staging}"
    assert app.running("prod") is None


# prod ---------------------------------------------------------------------------------------------


def test_crash_looping_prod_is_restored_at_once_and_advance_says_so(busybox_app: BusyboxApp) -> None:
    """Hazard: prod runs with restart policy unless-stopped, so a release that crashes at start is
    restarted by the engine and looks "restarting" rather than dead: the old wait sat out the whole
    health timeout (prod down all along) before restoring. The wait must end at the first exit or
    restart, with the exit code and log; prod is restored and verified; advance says so."""
    app = busybox_app
    app.configure(health_timeout_s=LONG)
    a_run = app.deploy(app.commit("release A"))
    a = app.running("prod")
    assert a is not None
    release_a = next(r for r in app.show(a_run)["releases"] if r["environment"] == "prod")
    sha_b = commit_broken(app, "release B crashes in prod", crash_in="prod")
    run_id = app.start(sha_b)
    app.advance(run_id, "deploy-staging").ok()

    result = app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    payload = result.payload
    assert app.verdicts(payload) == [
        ("check_staging_image_fresh", "pass"),
        ("promote_prod", "fail"),
        ("rollback_prod", "pass"),
    ], payload
    promote = check_of(payload, "promote_prod")
    assert promote["reason"].startswith("prod: "), promote["reason"]
    assert_crash_evidence(promote["reason"], f"{app.name}-prod")
    assert "restart" in promote["reason"].splitlines()[0], "the engine's restart is named"
    failure = payload["failure"]
    assert failure["gate"] == "promote_prod" and failure["exit_code"] == 3
    assert failure["prod"]["action"] == "restored"
    assert failure["prod"]["release_id"] == release_a["release_id"]
    assert failure["prod"]["summary"] == (
        f"restored to release {release_a['release_id']} ({release_a['revision'][:12]}), verified"
    )
    # The transition's one-line summary comes first; the log follows it.
    first = payload["reason"].splitlines()[0]
    assert first.startswith("promote_prod: prod: ") and "; rollback_prod: prod restored" in first, first
    rollback = [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"]
    assert [r["kind"] for r in rollback] == ["rollback"]
    assert "\n" not in rollback[0]["reason"], "the rollback release records the one-line reason"
    restored = app.running("prod")
    assert restored is not None and restored.status == "running" and restored.image_id == a.image_id

    # Human output of the same kind of failure.
    app.advance(run_id, "deploy-staging").ok()
    human = app.advance(run_id, "deploy", as_json=False)
    assert human.exit_code == 1, human.describe()
    out = human.stdout.splitlines()
    assert "  gate:   promote_prod" in out, out
    assert any(line.startswith("  reason: prod: ") and "exited with code 3" in line for line in out), out
    assert out[-1].startswith("  prod:   restored to release "), out
    assert out[-1].endswith("verified"), out
    assert SECRET not in human.stdout
    again = app.running("prod")
    assert again is not None and again.image_id == a.image_id


def test_failed_first_promotion_says_prod_was_stopped(busybox_app: BusyboxApp) -> None:
    """With no release to go back to, prod is stopped; advance must say that, not "restored"."""
    app = busybox_app
    app.configure(health_timeout_s=LONG)
    sha = commit_broken(app, "first release crashes in prod", crash_in="prod")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()

    human = app.advance(run_id, "deploy", as_json=False)
    assert human.exit_code == 1, human.describe()
    out = human.stdout.splitlines()
    assert "  gate:   promote_prod" in out
    assert out[-1] == "  prod:   stopped: no previous release to restore", out
    assert app.running("prod") is None
    shown = app.show(run_id)["transitions"][-1]
    assert shown["reason"].splitlines()[0].startswith("promote_prod: prod: ")
