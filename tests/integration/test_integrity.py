"""Provably the validated commit (issue 10): attacks that put an image not built from the sha into prod.

Each test reproduces the attack as someone with access to the engine would mount it, and fails without
the fix.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import BuildImage, BusyboxApp, ComposeApp

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"


def test_kill_switch_off_promotes_the_runs_recorded_image_not_a_forged_tag(
    busybox_app: BusyboxApp, busybox_image: BuildImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs A (sha X) and B (sha Y) both reach deploy-staging; an attacker builds another image with
    ``LABEL org.opencontainers.image.revision=X`` and tags it ``<app>:X``. With the freshness check
    switched off, advancing A must promote the image A's own staging edge built and recorded, never
    what the tag names now (verification proves only the label, which anyone can forge)."""
    app = busybox_app
    app.configure()
    sha_x = app.commit("release X")
    run_a = app.start(sha_x)
    staged = app.advance(run_a, "deploy-staging").ok()
    (staged_a,) = [r for r in app.show(run_a)["releases"] if r["environment"] == "staging"]
    run_b = app.start(app.commit("release Y"))
    app.advance(run_b, "deploy-staging").ok()
    assert staged["outcome"] == "succeeded"

    forged_dockerfile = (
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY forged /forged\n"
        f"LABEL {REVISION_LABEL}={sha_x}\n"
        'CMD ["/bin/busybox", "sh", "-c", "exec /bin/busybox httpd -f -p 127.0.0.1:$PORT -h /"]\n'
    )
    forged = busybox_image(
        None, tag=f"{app.name}:{sha_x}", dockerfile=forged_dockerfile, files={"forged": b"in no commit\n"}
    )
    assert forged.id != staged_a["image_id"]

    monkeypatch.setenv("ORCH_IMAGE_FRESHNESS_ENABLED", "false")
    payload = app.advance(run_a, "deploy").ok()
    assert payload["outcome"] == "succeeded", payload
    prod = app.running("prod")
    assert prod is not None and prod.image_id == staged_a["image_id"] != forged.id
    (released,) = [r for r in app.show(run_a)["releases"] if r["environment"] == "prod"]
    assert released["image_id"] == staged_a["image_id"]


def test_kill_switch_off_without_a_recorded_staging_image_fails_closed(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's staging image was pruned: promoting whatever ``<app>:<sha>`` names would be the hole
    again, so the edge fails (exit 1) and prod is never touched."""
    app = busybox_app
    app.configure()
    sha = app.commit("release")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    (staged,) = [r for r in app.show(run_id)["releases"] if r["environment"] == "staging"]
    app.engine.remove_container(f"{app.name}-staging")
    app.engine.remove_image(staged["image_id"], force=True)

    monkeypatch.setenv("ORCH_IMAGE_FRESHNESS_ENABLED", "false")
    result = app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    (fresh, *_undone) = result.payload["checks"]
    assert (fresh["name"], fresh["status"]) == ("check_staging_image_fresh", "fail")
    assert "is gone from the engine" in fresh["reason"]
    assert app.running("prod") is None


SECRET = "hunter2-correct-horse-battery"


def test_an_app_that_logs_its_environment_leaks_no_secret_into_history(busybox_app: BusyboxApp) -> None:
    """The app prints its environment at start-up and then fails its health check: the container's logs
    are kept as evidence. The secret the orchestrator gave it (``env``), and a credential-shaped line,
    must be masked in the database, in `runs show` and in `advance --json`."""
    app = busybox_app
    app.configure()
    config = app.workspace.config_path
    config.write_text(config.read_text() + f'\n[apps.{app.name}.env]\nDB_PASSWORD = "{SECRET}"\n')
    logs_env = (
        'ENTRYPOINT ["/bin/busybox", "sh", "-c", '
        '"/bin/busybox env; echo API_TOKEN=tok_0123456789abcdef; exec \\"$@\\"", "--"]\n'
    )
    run_id = app.start(app.commit("logs its environment", health=False, extra=logs_env))
    result = app.advance(run_id, "deploy-staging")
    assert result.exit_code == 1, result.describe()
    failed = next(c for c in result.payload["checks"] if c["status"] == "fail")
    assert "DB_PASSWORD=***" in failed["details"]["logs_tail"], failed
    for text in (result.stdout, app.cli("runs", "show", run_id).stdout, json.dumps(app.show(run_id))):
        assert SECRET not in text and "tok_0123456789abcdef" not in text


def test_an_uncommitted_compose_change_is_refused_and_each_release_records_its_compose_file(
    compose_app: ComposeApp,
) -> None:
    """An uncommitted edit to the compose file (a host mount, an extra variable) used to reach prod with
    exit 0 and no trace. The compose file inside the app's repository must be the run's committed one
    (exit 2, nothing recorded, prod untouched otherwise), and every release records the sha256 of the
    compose file it ran with."""
    app = compose_app
    committed = app.write_compose(registry=None)
    app.configure()
    first = app.app.deploy(app.app.commit("release A"))
    (released,) = [r for r in app.app.show(first)["releases"] if r["environment"] == "prod"]
    assert released["compose_sha256"] == "sha256:" + hashlib.sha256(committed).hexdigest()
    prod_before = app.running("prod")

    run_b = app.app.start(app.app.commit("release B"))
    mount = b"    network_mode: host\n    volumes: [/etc:/host-etc:ro]\n"
    app.compose_file.write_bytes(committed.replace(b"    network_mode: host\n", mount, 1))
    message = app.app.advance(run_b, "deploy-staging").error(2, "bad_input")
    assert message.startswith(f"compose file {app.compose_file} differs from its version in commit"), message
    assert app.app.show(run_b)["transitions"] == []
    assert app.running("prod") == prod_before
