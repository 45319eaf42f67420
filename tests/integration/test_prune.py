"""`orchestrator prune` on the real engine: what no kept release needs goes, what rollback needs stays.

Every image, container and tag here is the test's own (unique app names, unique image names); nothing
else on the shared engine is listed for removal, let alone removed: the prune itself never touches
another app's images, which is one of the things asserted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.docker_engine import DockerEngine, ImageInfo

if TYPE_CHECKING:
    from conftest import BusyboxApp, ComposeApp

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


def releases_by_env(store: Store, app: str) -> dict[str, list[Any]]:
    return {env: store.releases(app, env, limit=100) for env in ("staging", "prod")}


def stopped_container(
    engine: DockerEngine, docker_cleanup: Callable[..., None], name: str, image: ImageInfo, app: str, env: str
) -> str:
    """A container the app's runtime could have left behind (its labels), exited at once."""
    docker_cleanup(container=name)
    engine.run(
        name,
        image.id,
        command=["/bin/busybox", "true"],
        labels={"orchestrator.app": app, "orchestrator.environment": env},
    )
    assert engine.wait(name, timeout=30) == 0
    found = engine.container(name)
    assert found is not None and found.status == "exited"
    return found.id


def test_prune_keeps_every_kept_release_and_rollback_to_each_still_works(
    busybox_app: BusyboxApp,
    busybox_image: Callable[..., ImageInfo],
    engine: DockerEngine,
    docker_cleanup: Callable[..., None],
    unique_name: Callable[[str], str],
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hazard: housekeeping that removes an image a rollback needs, an image of another app, or a running
    container. Four releases, keep_releases = 2: --dry-run lists exactly the two older releases' images
    and the stale stopped containers and removes nothing; prune removes exactly that, says how many bytes
    came back, records it as an event; then rollback to the older kept release (and forward again to the
    newer one) is verified running."""
    app = busybox_app
    monkeypatch.setenv("ORCH_KEEP_RELEASES", "2")
    monkeypatch.setenv("ORCH_PRUNE_AFTER_DEPLOY", "false")
    shas = [app.commit(f"release {n}") for n in range(1, 5)]
    for sha in shas:
        app.deploy(sha)
    history = releases_by_env(store, app.name)
    by_sha = {r.revision: r.image_id for r in history["prod"]}
    assert len(set(by_sha.values())) == 4
    old_images = {by_sha[shas[0]], by_sha[shas[1]]}
    kept_images = {by_sha[shas[2]], by_sha[shas[3]]}

    # Not the app's: an unrelated image, and one whose name only starts like the app's.
    unrelated = busybox_image()
    lookalike = busybox_image(tag=f"{app.name}x:1")
    # Stopped containers the app left in staging (1 s apart: the engine lists creation in seconds).
    helper = busybox_image()
    stale = []
    for n in range(3):
        stale.append(unique_name(f"stale{n}"))
        stopped_container(engine, docker_cleanup, stale[-1], helper, app.name, "staging")
        time.sleep(1.1)
    sizes = {i: engine.image(i).size for i in old_images}  # type: ignore[union-attr]

    dry = app.cli("prune", app.name, "--dry-run", as_json=True).ok()
    (planned,) = dry["apps"]
    would = planned["would_remove"]
    assert {i["image_id"] for i in would["images"]} == old_images, would
    assert {i["image_id"]: i["refs"] for i in would["images"]} == {
        by_sha[sha]: [f"{app.name}:{sha}"] for sha in shas[:2]
    }
    assert sorted(c["name"] for c in would["containers"]) == sorted(stale[:2]), would
    assert planned["bytes"] == sum(sizes.values())
    assert {k["image_id"] for k in planned["kept_images"]} >= kept_images
    assert planned["kept_releases"] == {env: [r.id for r in history[env][:2]] for env in ("staging", "prod")}
    assert all(engine.image(i) is not None for i in old_images), "--dry-run removed something"
    assert all(engine.container(name) is not None for name in stale)
    human = app.cli("prune", app.name, "--dry-run")
    assert human.exit_code == 0, human.describe()
    for image_id in old_images:
        assert f"would remove image {image_id[:19]}" in human.stdout, human.stdout

    started = time.perf_counter()
    done = app.cli("prune", app.name, as_json=True).ok()
    took = time.perf_counter() - started
    (result,) = done["apps"]
    removed = result["removed"]
    assert {i["image_id"] for i in removed["images"]} == old_images
    assert [c["name"] for c in removed["containers"]] == [c["name"] for c in would["containers"]]
    assert result["bytes_reclaimed"] == sum(sizes.values()) and result["skipped"] == []
    print(  # a figure for the report, not an assertion
        f"prune: {len(removed['images'])} images, {len(removed['containers'])} containers, "
        f"{result['bytes_reclaimed']} bytes reclaimed in {took:.2f} s"
    )
    assert all(engine.image(i) is None for i in old_images)
    assert all(engine.image(i) is not None for i in kept_images)
    for image in (unrelated, lookalike, helper):
        assert engine.image(image.id) is not None, "an image that is not the app's was removed"
    assert [engine.container(n) is not None for n in stale] == [False, False, True]
    for env in ("staging", "prod"):
        running = app.running(env)
        assert running is not None and running.status == "running" and running.revision == shas[3]
    (event,) = [e for e in store.events(app=app.name) if e.kind == "pruned"]
    assert {i["image_id"] for i in event.details["images"]} == old_images
    assert event.details["bytes_reclaimed"] == sum(sizes.values())

    again = app.cli("prune", app.name)
    assert again.exit_code == 0 and "nothing to prune" in again.stdout, again.describe()

    older_kept, newer_kept = history["prod"][1], history["prod"][0]
    for target in (older_kept, newer_kept):
        back = app.cli("rollback", app.name, "--env", "prod", "--to", target.id, as_json=True).ok()
        assert back["outcome"] == "rolled_back", back
        now = app.running("prod")
        assert now is not None and now.status == "running"
        assert (now.image_id, now.revision) == (target.image_id, target.revision)
        assert app.get("prod", "/version").body.strip() == target.revision


def test_prune_runs_after_each_successful_promotion(
    busybox_app: BusyboxApp, engine: DockerEngine, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH_PRUNE_AFTER_DEPLOY defaults to on: once the second release reaches prod (keep_releases = 1),
    the first one's image is gone without anyone running prune, and the event names the run."""
    app = busybox_app
    monkeypatch.setenv("ORCH_KEEP_RELEASES", "1")
    first, second = app.commit("one"), app.commit("two")
    app.deploy(first)
    first_image = app.running("prod").image_id  # type: ignore[union-attr]
    run_id = app.deploy(second)
    assert engine.image(first_image) is None
    assert app.running("prod").revision == second  # type: ignore[union-attr]
    (event,) = [e for e in store.events(app=app.name) if e.kind == "pruned"]
    assert event.run_id == run_id
    assert [i["image_id"] for i in event.details["images"]] == [first_image]
    assert store.locks(app.name) == [], "the prune's own lock is released"


def test_the_prune_after_a_deploy_decides_from_the_images_listed_while_prod_was_swapped(
    busybox_app: BusyboxApp, engine: DockerEngine, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's image list (40-50 ms on a busy engine) is asked for once prod's tags have moved, in a
    thread of its own, while prod's containers are swapped (prune.ImagesAhead): the prune after the deploy
    lists none itself, and removes what it removed when it listed them after the verdict."""
    import threading

    listed_by: list[str] = []
    real_images = DockerEngine.images

    def images(self: DockerEngine) -> list[ImageInfo]:
        listed_by.append(threading.current_thread().name)
        return real_images(self)

    monkeypatch.setattr(DockerEngine, "images", images)
    app = busybox_app
    monkeypatch.setenv("ORCH_KEEP_RELEASES", "1")
    first, second = app.commit("one"), app.commit("two")
    app.deploy(first)
    first_image = app.running("prod").image_id  # type: ignore[union-attr]
    assert listed_by == ["prune-images-ahead"], "one list per deploy, read ahead"
    run_id = app.deploy(second)
    assert listed_by == ["prune-images-ahead"] * 2
    assert engine.image(first_image) is None
    (event,) = [e for e in store.events(app=app.name) if e.kind == "pruned"]
    assert event.run_id == run_id
    assert [i["image_id"] for i in event.details["images"]] == [first_image]


@pytest.mark.parametrize(
    ("failure", "kind"), [("error", "prune_failed"), ("signal", "prune_failed"), ("locked", "prune_skipped")]
)
def test_a_failed_prune_never_fails_the_deploy(
    busybox_app: BusyboxApp, store: Store, monkeypatch: pytest.MonkeyPatch, failure: str, kind: str
) -> None:
    """The prune after a promotion fails, is interrupted by SIGTERM, or finds the environments taken by
    another run: the promotion stands (exit 0, run in deploy, prod on the new release), and what happened
    is logged and recorded as an event."""
    import signal

    from orchestrator import prune as prune_module
    from orchestrator.errors import Conflict
    from orchestrator.lifecycle import Interrupted

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        if failure == "signal":
            raise Interrupted(signal.SIGTERM)
        if failure == "locked":
            raise Conflict(f"{busybox_app.name} staging is locked by run 99 (ci)")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prune_module, "prune", broken)
    app = busybox_app
    sha = app.commit("one")
    run_id = app.deploy(sha)  # asserts exit 0 and state deploy for both edges
    assert app.running("prod").revision == sha  # type: ignore[union-attr]
    (event,) = [e for e in store.events(app=app.name) if e.kind.startswith("prune")]
    assert (event.kind, event.run_id) == (kind, run_id)
    assert "the deploy stands" in event.message
    assert store.get_run(run_id).state == "deploy"


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_locked_app_is_not_pruned(
    busybox_app: BusyboxApp,
    engine: DockerEngine,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool,
) -> None:
    """A transition in flight (here: a hand-held lock) may be building an image nothing has recorded yet:
    prune exits 3 naming the holder and removes nothing."""
    app = busybox_app
    monkeypatch.setenv("ORCH_KEEP_RELEASES", "1")
    monkeypatch.setenv("ORCH_PRUNE_AFTER_DEPLOY", "false")
    app.deploy(app.commit("one"))
    old = app.running("prod").image_id  # type: ignore[union-attr]
    app.deploy(app.commit("two"))
    app.cli("lock", app.name, "--env", "staging", "--reason", "investigating", "--actor", "alice").ok()
    args = ("prune", app.name, *(["--dry-run"] if dry_run else []))
    message = app.cli(*args, as_json=True).error(3, "conflict")
    assert "alice" in message and "nothing pruned" in message, message
    assert engine.image(old) is not None
    assert [e for e in store.events(app=app.name) if e.kind == "pruned"] == []
    assert [(lk.environment, lk.holder) for lk in store.locks(app.name)] == [("staging", "alice")]


def test_prune_removes_the_anchors_of_releases_no_longer_kept(
    compose_app: ComposeApp, engine: DockerEngine, store: Store
) -> None:
    """A compose app deployed three times with keep_releases = 3, then lowered to 1: prune removes every
    anchor but the newest release's per environment (and the two older images), leaves files that are
    not anchors of known releases alone, and prod and staging keep running the newest release."""
    app = compose_app
    app.write_compose(registry=None)
    app.configure(keep_releases=3)
    shas = [app.app.commit(f"release {n}") for n in "ABC"]
    for sha in shas:
        app.app.deploy(sha)
    history = releases_by_env(store, app.name)
    assert all(len(app.anchors(env)) == 3 for env in ("staging", "prod"))
    history_dir = app.override_file.parent / "history"
    present = {(env, int(a.stem.rsplit("-", 1)[1])) for env in ("staging", "prod") for a in app.anchors(env)}
    newest = {(env, history[env][0].id) for env in ("staging", "prod")}
    assert newest <= present and len(present) == 6, present
    stray = history_dir / "notes.txt"
    stray.write_text("kept by hand\n", encoding="utf-8")
    unknown = history_dir / "prod-release-999999.yml"  # no such release in this history
    unknown.write_text("services: {}\n", encoding="utf-8")
    old_images = {r.image_id for r in history["prod"][1:]}

    app.configure(keep_releases=1)
    (result,) = app.app.cli("prune", app.name, as_json=True).ok()["apps"]
    removed = {(a["environment"], a["release_id"]) for a in result["removed"]["anchors"]}
    assert removed == present - newest, result
    for env in ("staging", "prod"):
        left = [a.name for a in app.anchors(env) if a != unknown]
        assert left == [f"{env}-release-{history[env][0].id:06d}.yml"], left
    assert stray.is_file() and unknown.is_file()
    assert {i["image_id"] for i in result["removed"]["images"]} == old_images
    assert all(engine.image(i) is None for i in old_images)
    for env in ("staging", "prod"):
        running = app.running(env)
        assert running is not None and running.status == "running" and running.revision == shas[2]


def test_prune_without_an_app_prunes_every_app_but_the_locked_ones(
    busybox_app: BusyboxApp, engine: DockerEngine, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One busy app must not stop the housekeeping of the others, nor pass unnoticed: exit 3 naming it."""
    app = busybox_app
    monkeypatch.setenv("ORCH_KEEP_RELEASES", "1")
    monkeypatch.setenv("ORCH_PRUNE_AFTER_DEPLOY", "false")
    app.configure(other_apps=1)
    (other,) = app.other_apps
    app.deploy(app.commit("one"))
    old = app.running("prod").image_id  # type: ignore[union-attr]
    app.deploy(app.commit("two"))
    app.cli("lock", other, "--env", "prod", "--reason", "maintenance", "--actor", "bob").ok()
    result = app.cli("prune", as_json=True)
    assert result.exit_code == 3, result.describe()
    assert [a["app"] for a in result.payload["apps"]] == [app.name]
    assert "bob" in result.payload["locked"][other]
    assert engine.image(old) is None
