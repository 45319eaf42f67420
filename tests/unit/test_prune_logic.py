"""The pure prune decision: what may go, from the store's releases and the engine's images/containers.

No Docker: images and containers are the adapter's plain values, built here by hand. Each test names
the rule it holds; removing that rule from ``orchestrator.prune.decide`` makes it fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.docker_engine import ContainerInfo, ImageInfo, ListedContainer
from orchestrator.errors import BadInput
from orchestrator.prune import Plan, decide, in_flight_images, repository_of
from orchestrator.store.records import StepRecord, TransitionRecord
from orchestrator.store.repository import ReleaseRecord

APP = "shop"
REG = "127.0.0.1:5000"


def img(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def release(rid: int, image: str, env: str = "prod", digest: str | None = None) -> ReleaseRecord:
    return ReleaseRecord(rid, APP, env, image, digest, "a" * 40, None, "deploy", None, datetime.now(UTC))


def image(n: int, *tags: str, digests: Sequence[str] = (), size: int = 1000, **labels: str) -> ImageInfo:
    return ImageInfo(img(n), tuple(tags), dict(labels), tuple(digests), size)


def container(
    name: str, image_id: str, status: str = "exited", created: float = 0.0, **labels: str
) -> ListedContainer:
    return ListedContainer(ContainerInfo(f"id-{name}", name, image_id, status, dict(labels)), created)


def app_container(name: str, env: str, image_id: str, status: str, created: float) -> ListedContainer:
    labels = {"orchestrator.app": APP, "orchestrator.environment": env}
    return container(name, image_id, status, created, **labels)


def plan(
    *,
    images: Sequence[ImageInfo] = (),
    kept: Mapping[str, Sequence[ReleaseRecord]] | None = None,
    containers: Sequence[ListedContainer] = (),
    anchors: Sequence[Path] = (),
    in_flight: Mapping[str, str] | None = None,
    repositories: Sequence[str] = (APP, f"{REG}/{APP}"),
) -> Plan:
    return decide(
        APP,
        repositories=repositories,
        keep_releases=2,
        kept_releases=kept or {},
        images=images,
        containers=containers,
        anchors=anchors,
        in_flight=in_flight,
    )


def removed_ids(p: Plan) -> set[str]:
    return {i.image_id for i in p.images}


def test_images_of_kept_releases_stay_and_older_ones_go() -> None:
    images = [image(n, f"{APP}:{n}000") for n in (1, 2, 3, 4)]
    kept = {"prod": [release(4, img(4)), release(3, img(3))], "staging": [release(5, img(2), "staging")]}
    p = plan(images=images, kept=kept)
    assert removed_ids(p) == {img(1)}
    assert {k.image_id: k.why for k in p.kept}[img(2)] == ("release 5 (staging)",)
    assert p.images[0].refs == (f"{APP}:1000",) and p.images[0].deletes and p.bytes == 1000


def test_an_image_a_kept_release_names_by_digest_stays() -> None:
    """A release pinned by registry digest: the local image carrying that digest is its image."""
    digest = f"{REG}/{APP}@sha256:" + "d" * 64
    images = [image(7, digests=[digest]), image(8, f"{APP}:old")]
    p = plan(images=images, kept={"prod": [release(9, img(0xE), digest=digest)]})
    assert removed_ids(p) == {img(8)}
    assert p.kept[0].why == ("release 9 (prod)",)


@pytest.mark.parametrize("status", ["running", "exited", "created", "restarting", "paused"])
def test_an_image_any_container_uses_stays(status: str) -> None:
    """Whoever's container it is (another app's, one started by hand), running or not."""
    images = [image(1, f"{APP}:abc"), image(2, f"{APP}:def")]
    p = plan(images=images, containers=[container("someone-elses", img(1), status)])
    assert removed_ids(p) == {img(2)}


def test_the_image_of_a_run_in_flight_stays() -> None:
    images = [image(1, f"{APP}:abc"), image(2, f"{APP}:def")]
    p = plan(images=images, in_flight={img(1): "transition 7 of run 3"})
    assert removed_ids(p) == {img(2)}
    assert p.kept[0].why == ("transition 7 of run 3 in flight",)


def test_in_flight_images_are_every_image_an_unfinished_transition_recorded() -> None:
    now = datetime.now(UTC)

    def step(name: str, changes: dict[str, object]) -> StepRecord:
        return StepRecord(1, 1, name, None, "done", now, now, changes, None)

    steps = (
        step("build", {"image_id": img(1), "tag": "shop:abc"}),
        step("prod_tag", {"image_id": img(1), "tags_before": {"shop:prod": img(2), "shop:latest": None}}),
        step("prod_stop", {"container_id": "c1", "image_id": img(3)}),
    )
    t = TransitionRecord(
        7, 3, "deploy-staging", "deploy", "ci", now, None, "in_progress", None, None, (), steps
    )
    assert in_flight_images([t]) == {i: "transition 7 of run 3" for i in (img(1), img(2), img(3))}


def test_other_apps_and_unrelated_images_are_never_touched() -> None:
    """Selected by the app's repository names and label, never by being dangling or by a prefix."""
    images = [
        image(1, "shopping:1"),  # a name that merely starts like the app's
        image(2, "shop-staging:1"),
        image(3, "eu/shop:1"),  # another namespace
        image(4, f"{REG}/shopfront:1"),
        image(5),  # dangling, no label: not ours to judge
        image(6, **{"orchestrator.app": "other"}),
        image(7, "postgres:16"),
        image(8, f"{APP}:abc"),
    ]
    p = plan(images=images)
    assert removed_ids(p) == {img(8)}


def test_images_pushed_to_the_registry_are_the_apps_too() -> None:
    pushed = image(1, f"{REG}/{APP}:rev1", f"{APP}:rev1", digests=[f"{REG}/{APP}@sha256:" + "e" * 64])
    p = plan(images=[pushed])
    assert p.images[0].refs == (f"{REG}/{APP}:rev1", f"{APP}:rev1", f"{REG}/{APP}@sha256:" + "e" * 64)
    assert p.images[0].deletes


def test_only_our_names_are_removed_from_an_image_someone_else_also_tagged() -> None:
    shared = image(1, f"{APP}:abc", "mirror/shop:abc", size=5000)
    p = plan(images=[shared])
    assert p.images[0].refs == (f"{APP}:abc",)
    assert not p.images[0].deletes and p.bytes == 0  # the image stays: no bytes come back


def test_an_untagged_image_labelled_ours_goes_by_id_but_not_if_others_name_it() -> None:
    ours = image(1, **{"orchestrator.app": APP})
    named_by_others = image(2, "mirror/x:1", **{"orchestrator.app": APP})
    p = plan(images=[ours, named_by_others])
    assert [(i.image_id, i.refs) for i in p.images] == [(img(1), (img(1),))]


def test_an_image_carrying_an_environment_tag_stays() -> None:
    """`<app>:latest` is what compose files name: never pulled from under them."""
    images = [
        image(1, f"{APP}:latest"),
        image(2, f"{APP}:staging"),
        image(3, f"{APP}:prod"),
        image(4, f"{APP}:x"),
    ]
    assert removed_ids(plan(images=images)) == {img(4)}


def test_stopped_containers_older_than_the_newest_per_environment_go() -> None:
    containers = [
        app_container("failed-1", "staging", img(1), "exited", 100),
        app_container("failed-2", "staging", img(1), "exited", 200),
        app_container("failed-3", "staging", img(1), "dead", 300),  # the newest: kept for docker logs
        app_container("old-prod", "prod", img(2), "exited", 50),
        app_container("newer-prod", "prod", img(2), "exited", 60),
        app_container("running-old", "staging", img(1), "running", 10),  # never a running one
        app_container("restarting-old", "prod", img(1), "restarting", 10),
        container("other-app", img(1), "exited", 1, **{"orchestrator.app": "other"}),
        container("by-hand", img(1), "exited", 1),
    ]
    p = plan(containers=containers)
    assert [c.name for c in p.containers] == ["old-prod", "failed-1", "failed-2"]


def test_the_environments_own_container_is_never_removed() -> None:
    containers = [
        app_container(f"{APP}-staging", "staging", img(1), "exited", 100),
        app_container("renamed-later", "staging", img(1), "exited", 200),
    ]
    assert plan(containers=containers).containers == ()


def test_an_image_only_a_removed_container_used_goes_with_it() -> None:
    containers = [
        app_container("failed-1", "staging", img(1), "exited", 100),
        app_container("failed-2", "staging", img(2), "exited", 200),
    ]
    p = plan(images=[image(1, f"{APP}:a"), image(2, f"{APP}:b")], containers=containers)
    assert removed_ids(p) == {img(1)}


def test_anchors_of_releases_not_kept_go(tmp_path: Path) -> None:
    names = [
        "prod-release-000001.yml",
        "prod-release-000003.yml",
        "prod-release-000005.yml",
        "prod-release-000009.yml",  # newer than any release the store knows: left alone
        "staging-release-000002.yml",
        "staging-release-000004.yml",
        "README",
    ]
    anchors = [tmp_path / n for n in names]
    kept = {"prod": [release(5, img(5)), release(3, img(3))], "staging": [release(4, img(4), "staging")]}
    p = plan(kept=kept, anchors=anchors)
    assert [(a.environment, a.release_id) for a in p.anchors] == [("prod", 1), ("staging", 2)]


def test_no_release_in_an_environment_removes_none_of_its_anchors(tmp_path: Path) -> None:
    p = plan(kept={"prod": [release(5, img(5))]}, anchors=[tmp_path / "staging-release-000001.yml"])
    assert p.anchors == ()


@pytest.mark.parametrize(
    ("ref", "repository"),
    [
        ("shop:abc", "shop"),
        ("127.0.0.1:5000/shop:abc", "127.0.0.1:5000/shop"),
        ("127.0.0.1:5000/shop", "127.0.0.1:5000/shop"),
        ("127.0.0.1:5000/ns/shop@sha256:" + "a" * 64, "127.0.0.1:5000/ns/shop"),
        ("shop", "shop"),
    ],
)
def test_repository_of(ref: str, repository: str) -> None:
    assert repository_of(ref) == repository


def test_prune_after_deploy_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.toml"
    cfg.write_text("[orchestrator]\n", encoding="utf-8")
    assert load_config(cfg, env={}).settings.prune_after_deploy is True
    assert load_config(cfg, env={"ORCH_PRUNE_AFTER_DEPLOY": "false"}).settings.prune_after_deploy is False
    cfg.write_text("[orchestrator]\nprune_after_deploy = false\n", encoding="utf-8")
    assert load_config(cfg, env={}).settings.prune_after_deploy is False
    with pytest.raises(BadInput, match="ORCH_PRUNE_AFTER_DEPLOY"):
        load_config(cfg, env={"ORCH_PRUNE_AFTER_DEPLOY": "sometimes"})
