"""StepLog.when_done: work that may start only once a named step is done (the prune's image list, read
ahead once prod's tags have moved: prune.ImagesAhead) starts then, and never after a step that failed."""

from __future__ import annotations

import pytest

from orchestrator.steps import StepLog, StepStatus


def recording_log() -> tuple[StepLog, list[str]]:
    """A log whose begin and finish write to ``seen``, like the store does."""
    seen: list[str] = []

    def begin(position: int, name: str, env: str | None) -> int:
        seen.append(f"begin {name}")
        return position

    def finish(step_id: int, status: StepStatus, changes: dict[str, object], error: str | None) -> None:
        seen.append(f"finish {step_id} {status.value}")

    return StepLog(begin, finish), seen


def test_the_callback_runs_once_the_named_step_is_recorded_done_and_only_once() -> None:
    log, seen = recording_log()
    log.when_done("prod_tag", lambda: seen.append("callback"))
    with log.step("prod_pull", "prod"):
        pass
    with log.step("prod_tag", "prod"):
        seen.append("tagging")
    with log.step("prod_stop", "prod"):
        pass
    with log.step("prod_tag", "prod"):  # a second step of that name (an undo's): not again
        pass
    assert seen == [
        "begin prod_pull",
        "finish 1 done",
        "begin prod_tag",
        "tagging",
        "finish 2 done",
        "callback",
        "begin prod_stop",
        "finish 3 done",
        "begin prod_tag",
        "finish 4 done",
    ]


def test_a_step_that_failed_or_raised_does_not_start_the_work() -> None:
    log, seen = recording_log()
    log.when_done("prod_tag", lambda: seen.append("callback"))
    with log.step("prod_tag", "prod") as step:
        step.fail("the engine refused the tag")
    with pytest.raises(RuntimeError), log.step("prod_tag", "prod"):
        raise RuntimeError("engine gone")
    assert "callback" not in seen
    assert seen == ["begin prod_tag", "finish 1 failed", "begin prod_tag", "finish 2 failed"]


def test_a_log_without_a_store_still_calls_back() -> None:
    """Unit tests of pure logic and operator actions name their steps without recording them."""
    log, called = StepLog(), []
    log.when_done("prod_tag", lambda: called.append(True))
    with log.step("prod_tag", "prod"):
        pass
    assert called == [True]
