"""Pure release logic: which release a rollback returns to, and how drift is named. No Docker."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime

import pytest

from orchestrator import views
from orchestrator.errors import BadInput, Conflict
from orchestrator.releases import EnvStatus, Observed, choose_target, compute_drift
from orchestrator.runtimes import RuntimeView
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


# --------------------------------------------------------------------------------------------------
# a plain rollback walks back through history, never forth


def chain(*steps: tuple[str, str]) -> list[ReleaseRecord]:
    """Releases from ``(kind, image letter)`` steps, oldest first; returned newest first, as stored."""
    records = [
        release(i + 1, "sha256:" + letter * 64, letter * 40, kind) for i, (kind, letter) in enumerate(steps)
    ]
    return list(reversed(records))


def roll(history: list[ReleaseRecord]) -> list[ReleaseRecord]:
    """``history`` after one plain rollback (recorded as the store records it: a new rollback release)."""
    target = choose_target(history, None, "shop", "prod")
    new = release(history[0].id + 1, target.image_id, target.revision, "rollback")
    return [new, *history]


def letters(history: list[ReleaseRecord]) -> str:
    return history[0].revision[0]


def test_two_rollbacks_in_a_row_go_further_back_and_never_flip_flop() -> None:
    """Hazard (issue 11): the second rollback returned to the release the first one had just left (C, B,
    C, B, ...), so an operator pressing rollback twice to escape two bad releases got a bad one back."""
    history = chain(("deploy", "a"), ("deploy", "b"), ("deploy", "c"), ("deploy", "d"))
    seen = []
    for _ in range(3):
        history = roll(history)
        seen.append(letters(history))
    assert seen == ["c", "b", "a"]
    with pytest.raises(Conflict) as exc:
        roll(history)
    assert "no earlier release" in str(exc.value) and "nothing to roll back to" in str(exc.value)


def test_a_release_deployed_after_rollbacks_rolls_back_to_what_ran_before_it() -> None:
    history = chain(("deploy", "a"), ("deploy", "b"), ("deploy", "c"), ("rollback", "b"), ("deploy", "d"))
    history = roll(history)
    assert letters(history) == "b", "what ran before d; c was rolled back from"
    history = roll(history)
    assert letters(history) == "a"


def test_after_an_explicit_rollback_a_plain_one_goes_before_the_release_it_returned_to() -> None:
    """``--to`` a; then a plain rollback must not go *forward* to b, which the operator skipped."""
    history = chain(("deploy", "a"), ("deploy", "b"), ("deploy", "c"), ("rollback", "a"))
    with pytest.raises(Conflict):
        choose_target(history, None, "shop", "prod")
    history = [release(5, "sha256:" + "d" * 64, "d" * 40), *history]
    assert letters(roll(history)) == "a", "from a new release: back to what ran before it"


def test_a_restore_after_a_failed_promotion_is_not_a_rollback_away_from_anything() -> None:
    """A failed promotion records its restore as a rollback release of the image prod kept running."""
    history = chain(("deploy", "a"), ("deploy", "b"), ("rollback", "b"))
    assert letters(roll(history)) == "a"


def test_an_image_rolled_back_from_is_skipped_even_under_an_older_release() -> None:
    """a, b, a again, c: back to a (c left), then to b (a left): a's older release is the image that was
    just rolled back from, so there is nothing further back."""
    history = chain(("deploy", "a"), ("deploy", "b"), ("deploy", "a"), ("deploy", "c"))
    history = roll(history)
    history = roll(history)
    assert letters(history) == "b"
    with pytest.raises(Conflict) as exc:
        roll(history)
    assert "rolled back from" in str(exc.value), "the message says why older releases do not count"


def test_a_release_promoted_again_after_being_rolled_back_from_counts_again() -> None:
    history = chain(("deploy", "a"), ("deploy", "b"), ("rollback", "a"), ("deploy", "b"), ("deploy", "c"))
    assert letters(roll(history)) == "b"


def test_a_named_release_may_be_one_that_was_rolled_back_from() -> None:
    history = chain(("deploy", "a"), ("deploy", "b"), ("rollback", "a"))
    assert choose_target(history, 2, "shop", "prod").id == 2


@pytest.mark.parametrize("seed", range(40))
def test_every_plain_rollback_lands_strictly_before_the_release_it_left(seed: int) -> None:
    """Property over random histories of deploys, plain rollbacks and restores: each plain rollback's
    target is older than the (original) release the environment ran, so repeated rollbacks end."""
    rng = random.Random(seed)
    history: list[ReleaseRecord] = []
    for _ in range(rng.randint(1, 12)):
        action = rng.choice(["deploy", "deploy", "rollback", "restore"])
        if action == "deploy" or not history:
            letter = rng.choice("abcdefgh")
            history = [release(len(history) + 1, "sha256:" + letter * 64, letter * 40), *history]
        elif action == "restore":
            current = history[0]
            history = [release(len(history) + 1, current.image_id, current.revision, "rollback"), *history]
        else:
            with contextlib.suppress(Conflict):
                history = roll(history)
    steps, limit = 0, len(history)
    while True:
        try:
            target = choose_target(history, None, "shop", "prod")
        except Conflict:
            break
        assert target.image_id != history[0].image_id
        history = [release(len(history) + 1, target.image_id, target.revision, "rollback"), *history]
        steps += 1
        assert steps <= limit, "rollbacks must run out: each goes further back"


# --------------------------------------------------------------------------------------------------
# status names the real cause, and says when something is wrong


@pytest.mark.parametrize(
    ("recorded", "seen", "cause"),
    [
        (True, running(), None),
        (False, Observed(), None),
        (True, Observed(), "container_gone"),
        (False, running(), "untracked"),
        (True, running(status="exited", healthy=False), "not_running"),
        (True, running(image=IMG_X, revision=SHA_B, tag_image_id=IMG_A, healthy=False), "another_image"),
        (True, running(healthy=False), "unhealthy"),
        (True, running(revision=None), "revision_label"),
        (True, running(tag_image_id=IMG_B), "tag_moved"),
    ],
)
def test_status_names_one_cause(recorded: bool, seen: Observed, cause: str | None) -> None:
    """Container gone, another image and unhealthy call for different fixes; an operator (or CI) must
    not have to read the differences to tell which it is."""
    rel = release(3, IMG_A, SHA_A) if recorded else None
    found = EnvStatus("shop", "prod", rel, seen, compute_drift(rel, seen, app="shop", env="prod"))
    assert found.cause == cause
    assert found.ok is (cause is None)
    assert views.env_status(found)["cause"] == cause
    assert (found.problem is None) is (cause is None)


def test_an_unhealthy_environment_is_not_ok_without_being_drift() -> None:
    found = EnvStatus(
        "shop", "prod", release(3, IMG_A, SHA_A), running(healthy=False, health_detail="HTTP 500")
    )
    assert (found.drift, found.ok, found.cause) == (False, False, "unhealthy")
    assert found.problem == "unhealthy: HTTP 500"


def test_an_unreachable_engine_is_its_own_cause_whatever_was_recorded() -> None:
    """Hazard: a host that is down reported as "container gone" (an operator would redeploy into a host
    that is not there) or as fine. Nothing was observed: the cause is unreachable, with the reason."""
    reason = "ssh: Connection refused"
    found = EnvStatus("shop", "prod", release(3, IMG_A, SHA_A), Observed(), [], "deploy@prod-1:22", reason)
    assert (found.ok, found.cause, found.drift) == (False, "unreachable", False)
    assert found.problem == "unreachable: ssh: Connection refused"
    shown = views.env_status(found)
    assert (shown["reachable"], shown["unreachable"], shown["engine"]) == (
        False,
        "ssh: Connection refused",
        "deploy@prod-1:22",
    )
    assert views.env_status(EnvStatus("shop", "prod", None, running()))["reachable"] is True


DIGEST_A = "reg:5000/shop@sha256:" + "a" * 64
DIGEST_B = "reg:5000/shop@sha256:" + "b" * 64


def swarm_release() -> ReleaseRecord:
    return ReleaseRecord(3, "shop", "prod", IMG_A, DIGEST_A, SHA_A, None, "deploy", None, datetime.now(UTC))


def service(pinned: str | None = DIGEST_A, tasks: tuple[str, ...] = (DIGEST_A, DIGEST_A)) -> RuntimeView:
    return RuntimeView("swarm", "shop-prod", pinned, 2, "completed", (), tasks)


def test_a_service_on_its_release_digest_has_no_drift() -> None:
    seen = running(runtime=service())
    assert compute_drift(swarm_release(), seen, app="shop", env="prod") == []
    assert EnvStatus("shop", "prod", swarm_release(), seen, []).ok


@pytest.mark.parametrize(
    ("view", "fragment"),
    [
        (service(pinned=DIGEST_B, tasks=(DIGEST_B, DIGEST_B)), f"is pinned to {DIGEST_B}"),
        (service(tasks=(DIGEST_A, DIGEST_B)), f"run {DIGEST_B}, not release 3's digest"),
        (service(tasks=(DIGEST_A,)), "1 of 2 tasks"),
        (service(pinned=None, tasks=()), "is gone"),
    ],
)
def test_a_service_or_task_on_another_digest_is_drift_even_when_one_container_looks_right(
    view: RuntimeView, fragment: str
) -> None:
    seen = running(runtime=view)  # the one container status looks at runs the release's image
    diffs = compute_drift(swarm_release(), seen, app="shop", env="prod")
    assert any(fragment in d for d in diffs), diffs
    status = EnvStatus("shop", "prod", swarm_release(), seen, diffs)
    assert status.cause == "service_drift" and not status.ok
