"""Staged promotion of a busybox app through the real CLI on the real engine: the happy path through both
edges, a release replacing another, and the build context being exactly the committed tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

TO_STAGING_GATES = ["commit_exists", "build_image", "image_revision", "deploy_staging", "staging_check"]
TO_PROD_GATES = ["check_staging_image_fresh", "promote_prod", "verify_prod"]


def test_both_edges_promote_the_image_built_once(busybox_app: BusyboxApp) -> None:
    """Hazard: prod runs something other than what was just checked on staging (a rebuild, a tag moved
    under our feet, a stale container). Prod must run the very image id the staging edge built and
    staging still runs (check_staging_image_fresh proves it), labelled and serving the full sha, and
    the releases must say so."""
    app = busybox_app
    sha = app.commit("release")
    run_id = app.start(sha)

    to_staging = app.advance(run_id, "deploy-staging").ok()
    assert app.verdicts(to_staging) == [(name, "pass") for name in TO_STAGING_GATES], to_staging
    assert to_staging["state"] == "deploy-staging"
    staged_id = to_staging["checks"][1]["details"]["image_id"]

    to_prod = app.advance(run_id, "deploy").ok()
    assert app.verdicts(to_prod) == [(name, "pass") for name in TO_PROD_GATES], to_prod
    assert (to_prod["state"], to_prod["outcome"], to_prod["reason"]) == ("deploy", "succeeded", None)
    fresh, promote, verify = to_prod["checks"]
    built = fresh["details"]["image_id"]
    assert built.startswith("sha256:")

    staging, prod = app.running("staging"), app.running("prod")
    assert staging is not None and prod is not None
    assert staging.status == prod.status == "running"
    assert staging.container_id == fresh["details"]["container_id"], "the gate checked live staging"
    assert fresh["details"]["rebuilt"] is False, "staging still ran the run's image: no rebuild"
    assert staging.image_id == built == staged_id, "staging runs the image the staging edge built"
    assert prod.image_id == built, "prod runs that same image id: no rebuild between staging and prod"
    assert prod.container_id == promote["details"]["container_id"]
    assert promote["details"]["image_id"] == built
    assert app.tagged("prod") == built, f"{app.name}:prod must point at the promoted image"
    assert app.tagged(sha) == built
    assert prod.revision == sha, "the label is the full 40-character sha"
    served = app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, sha)
    assert verify["details"]["served_revision"] == sha
    assert verify["details"]["found_image_id"] == built

    shown = app.show(run_id)
    assert shown["state"] == "deploy"
    assert [t["outcome"] for t in shown["transitions"]] == ["succeeded", "succeeded"]
    releases = [(r["environment"], r["kind"], r["image_id"], r["revision"]) for r in shown["releases"]]
    assert releases == [
        ("staging", "deploy", staged_id, sha),  # edge 1 (the prod edge found staging still on it)
        ("prod", "deploy", built, sha),
    ], shown["releases"]


def test_second_release_replaces_prod(busybox_app: BusyboxApp) -> None:
    """Hazard: a deploy that reports success while the old container keeps serving. A second commit
    must end with a new prod container on a new image, serving the new sha; the previous image stays
    (it is what a rollback restores)."""
    app = busybox_app
    first_sha = app.commit("release one")
    app.deploy(first_sha)
    first = app.running("prod")
    assert first is not None and first.revision == first_sha

    second_sha = app.commit("release two")
    run_id = app.deploy(second_sha)
    second = app.running("prod")

    assert second is not None and second.status == "running"
    assert second.container_id != first.container_id, "prod container was recreated"
    assert second.image_id != first.image_id
    assert second.revision == second_sha
    assert app.tagged("prod") == second.image_id
    served = app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, second_sha)
    prod_releases = [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"]
    assert [(r["kind"], r["image_id"], r["revision"]) for r in prod_releases] == [
        ("deploy", second.image_id, second_sha)
    ]
    assert app.tagged(first_sha) == first.image_id, "the previous release's image is kept for rollback"
    # The old container is killed while its successor is made under another name, then renamed away
    # and removed (runtimes/direct.py): nothing of either name is left, and the old one is gone.
    names = sorted(c.info.name for c in app.engine.containers(labels={"orchestrator.app": app.name}))
    assert names == [f"{app.name}-prod", f"{app.name}-staging"], names
    assert app.engine.container(first.container_id) is None


def test_build_context_is_the_committed_tree(busybox_app: BusyboxApp) -> None:
    """Hazard: an image built from the working tree ships what CI never validated. An untracked file and
    an uncommitted edit in the app's checkout must not reach the image."""
    app = busybox_app
    sha = app.commit("release")
    www = app.repo.path / "rootfs" / "www"
    committed_index = (www / "index.html").read_text()
    (www / "leak.txt").write_text("never committed\n")
    (www / "index.html").write_text("edited after the commit\n")

    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()

    leak = app.get("staging", "/leak.txt")
    assert leak.status == 404, f"an untracked file was served from the image: {leak}"
    index = app.get("staging", "/index.html")
    assert (index.status, index.body) == (200, committed_index), "the committed index.html is served"
    served = app.get("staging", "/version")
    assert (served.status, served.body.strip()) == (200, sha)


def test_dockerfile_copying_an_uncommitted_file_fails_the_build(busybox_app: BusyboxApp) -> None:
    """Hazard: the same leak through a COPY that names the file. The build must fail (the file is not in
    the committed tree), before anything runs, and leave prod alone."""
    app = busybox_app
    app.deploy(app.commit("good release"))
    prod_before = app.running("prod")
    staging_before = app.running("staging")

    sha = app.commit("copies a secret", extra="COPY secret.txt /secret.txt\n")
    (app.repo.path / "secret.txt").write_text("only on this machine\n")
    run_id = app.start(sha)
    result = app.advance(run_id, "deploy-staging")

    assert result.exit_code == 1, result.describe()
    assert app.verdicts(result.payload) == [("commit_exists", "pass"), ("build_image", "fail")]
    build = result.payload["checks"][1]
    assert "secret.txt" in build["reason"], build
    assert "COPY secret.txt" in build["details"]["build_log_tail"], "the build log is kept as evidence"
    assert result.payload["state"] == "development"
    assert app.tagged(sha) is None, "no image of the commit exists"
    assert app.running("staging") == staging_before
    assert app.running("prod") == prod_before
