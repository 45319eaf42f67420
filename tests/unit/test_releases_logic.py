"""Pure release logic: which release a rollback returns to, and how drift is named. No Docker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.errors import BadInput, Conflict
from orchestrator.releases import Observed, choose_target, compute_drift
from orchestrator.store.repository import ReleaseRecord

SHA_A = "a" * 40
SHA_B = "b" * 40
IMG_A = "sha256:" + "1" * 64
IMG_B = "sha256:" + "2" * 64
IMG_X = "sha256:" + "9" * 64


def release(rid: int, image: str, revision: str, kind: str = "deploy") -> ReleaseRecord:
    return ReleaseRecord(rid, "shop", "prod", image, None, revision, None, kind, None, datetime.now(UTC))


def test_rollback_target_is_the_newest_release_with_another_image() -> None:
    history = [release(5, IMG_B, SHA_B), release(4, IMG_B, SHA_B), release(3, IMG_A, SHA_A)]
    assert choose_target(history, None, "shop", "prod").id == 3


def test_rollback_to_a_named_release() -> None:
    history = [release(5, IMG_B, SHA_B), release(3, IMG_A, SHA_A)]
    assert choose_target(history, 3, "shop", "prod").id == 3


@pytest.mark.parametrize(
    ("history", "to", "error", "fragment"),
    [
        ([], None, Conflict, "no release in prod"),
        ([release(5, IMG_B, SHA_B), release(4, IMG_B, SHA_B)], None, Conflict, "no earlier release"),
        ([release(5, IMG_B, SHA_B), release(4, IMG_B, SHA_B)], 4, Conflict, "already runs"),
        ([release(5, IMG_B, SHA_B)], 99, BadInput, "release 99 is not a release of shop in prod"),
    ],
)
def test_nothing_to_roll_back_to_is_a_clear_error(
    history: list[ReleaseRecord], to: int | None, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as exc:
        choose_target(history, to, "shop", "prod")
    assert fragment in str(exc.value)


def running(image: str = IMG_A, revision: str | None = SHA_A, **kw: object) -> Observed:
    values: dict[str, object] = {
        "container": "shop-prod",
        "container_id": "c1",
        "status": "running",
        "image_id": image,
        "revision": revision,
        "tag_image_id": image,
        "healthy": True,
    }
    values.update(kw)
    return Observed(**values)  # type: ignore[arg-type]


def test_matching_environment_has_no_drift() -> None:
    assert compute_drift(release(3, IMG_A, SHA_A), running(), app="shop", env="prod") == []


def test_never_deployed_and_empty_is_not_drift() -> None:
    assert compute_drift(None, Observed(), app="shop", env="prod") == []


def test_container_without_a_release_is_drift() -> None:
    (diff,) = compute_drift(None, running(), app="shop", env="prod")
    assert "no release of shop in prod is recorded" in diff


def test_gone_container_is_drift() -> None:
    (diff,) = compute_drift(release(3, IMG_A, SHA_A), Observed(), app="shop", env="prod")
    assert "the container is gone" in diff and "release 3" in diff


def test_container_run_by_hand_with_another_image_names_every_difference() -> None:
    diffs = compute_drift(
        release(3, IMG_A, SHA_A),
        running(image=IMG_X, revision=SHA_B, status="running"),
        app="shop",
        env="prod",
    )
    assert any("runs image sha256:9999" in d and "release 3 recorded sha256:1111" in d for d in diffs)
    assert any(d.startswith("revision label:") and SHA_B in d for d in diffs)
    assert any("tag shop:prod points at sha256:9999" in d for d in diffs)


def test_moved_tag_alone_is_drift() -> None:
    (diff,) = compute_drift(release(3, IMG_A, SHA_A), running(tag_image_id=IMG_B), app="shop", env="prod")
    assert diff == "tag shop:prod points at sha256:222222222222, not release 3's image"


def test_stopped_container_and_missing_label_are_drift() -> None:
    diffs = compute_drift(
        release(3, IMG_A, SHA_A), running(status="exited", revision=None), app="shop", env="prod"
    )
    assert "shop-prod is exited, not running" in diffs
    assert any("no org.opencontainers.image.revision label" in d for d in diffs)
