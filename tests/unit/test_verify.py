"""The fail-closed revision rules: the only passing label is the exact full sha."""

from __future__ import annotations

import pytest

from orchestrator.verify import REVISION_LABEL, all_of, revision_label, same_image

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_exact_full_sha_passes() -> None:
    check = revision_label({REVISION_LABEL: SHA}, SHA)
    assert check.ok
    assert check.details["found_revision"] == SHA


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (None, "no org.opencontainers.image.revision label"),
        ({}, "no org.opencontainers.image.revision label"),
        ({"other": SHA}, "no org.opencontainers.image.revision label"),
        ({REVISION_LABEL: ""}, "is empty"),
        ({REVISION_LABEL: "   "}, "is empty"),
        ({REVISION_LABEL: "<no value>"}, "is empty"),
        ({REVISION_LABEL: SHA[:12]}, "short sha"),
        ({REVISION_LABEL: SHA[:7]}, "short sha"),
        ({REVISION_LABEL: SHA.upper()}, "expected"),
        ({REVISION_LABEL: SHA + "\n"}, "expected"),
        ({REVISION_LABEL: " " + SHA}, "expected"),
        ({REVISION_LABEL: "f" * 40}, "expected"),
    ],
)
def test_anything_else_fails_closed(labels: dict[str, str] | None, fragment: str) -> None:
    check = revision_label(labels, SHA)
    assert not check.ok
    assert fragment in check.reason
    assert check.details["expected_revision"] == SHA


def test_same_image_compares_full_ids() -> None:
    a = "sha256:" + "a" * 64
    b = "sha256:" + "a" * 63 + "b"
    assert same_image(a, a, "x").ok
    mismatch = same_image(a, b, "x")
    assert not mismatch.ok and b in mismatch.reason
    missing = same_image(a, None, "x")
    assert not missing.ok and "none" in missing.reason


def test_all_of_stops_at_first_failure_and_keeps_evidence() -> None:
    a = "sha256:" + "a" * 64
    result = all_of(same_image(a, a, "img"), revision_label({REVISION_LABEL: "nope"}, SHA))
    assert not result.ok
    assert "expected" in result.reason
    assert result.details["found_image_id"] == a and result.details["found_revision"] == "nope"
    assert all_of(same_image(a, a, "img"), revision_label({REVISION_LABEL: SHA}, SHA)).ok


def test_a_verification_is_a_verdict_a_gate_can_return_as_it_is() -> None:
    """One result type: what verify found is recorded by a gate without being copied field by field."""
    from orchestrator.verdict import GateStatus, Verdict

    a = "sha256:" + "a" * 64
    found = all_of(same_image(a, "sha256:" + "b" * 64, "img"), revision_label({REVISION_LABEL: SHA}, SHA))
    assert isinstance(found, Verdict) and found.status is GateStatus.FAIL and not found.ok
    assert same_image(a, a, "img").status is GateStatus.PASS
