"""Pure revision checks: is this image / this container provably the validated commit?

Fail-closed by construction: the only way to pass is a label that equals the full sha exactly, on the
exact image id we expect. Everything else (missing, empty, Go template's ``<no value>``, a short sha,
different case, whitespace, another commit) is a failure that says what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.verdict import Verdict

REVISION_LABEL = "org.opencontainers.image.revision"


def revision_label(labels: Mapping[str, str] | None, sha: str) -> Verdict:
    found = (labels or {}).get(REVISION_LABEL)
    evidence = {"label": REVISION_LABEL, "expected_revision": sha, "found_revision": found}
    if found is None:
        return Verdict.check(
            False,
            f"image has no {REVISION_LABEL} label: add 'ARG GIT_SHA' and "
            f"'LABEL {REVISION_LABEL}=$GIT_SHA' to the Dockerfile",
            evidence,
        )
    if found.strip() in ("", "<no value>"):
        return Verdict.check(
            False,
            f"{REVISION_LABEL} is empty ({found!r}): the Dockerfile must declare "
            f"'ARG GIT_SHA' before the LABEL that uses it",
            evidence,
        )
    if found != sha:
        if len(found) < len(sha) and sha.startswith(found):
            why = f"{REVISION_LABEL} is a short sha {found!r}; the full 40-character sha is required"
        else:
            why = f"{REVISION_LABEL} is {found!r}, expected {sha!r}"
        return Verdict.check(False, why, evidence)
    return Verdict.check(True, f"{REVISION_LABEL} = {sha[:12]}", evidence)


def same_image(expected_id: str, found_id: str | None, what: str) -> Verdict:
    evidence = {"expected_image_id": expected_id, "found_image_id": found_id}
    if found_id != expected_id:
        return Verdict.check(False, f"{what} is image {found_id or 'none'}, expected {expected_id}", evidence)
    return Verdict.check(True, f"{what} is image {expected_id[:19]}", evidence)


def all_of(*checks: Verdict) -> Verdict:
    """The first failing check wins; on success the evidence of every check is kept."""
    details: dict[str, Any] = {}
    for check in checks:
        details.update(check.details)
        if not check.ok:
            return Verdict.check(False, check.reason, details)
    return Verdict.check(True, "; ".join(c.reason for c in checks), details)
