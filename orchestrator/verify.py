"""Pure revision checks: is this image / this container provably the validated commit?

Fail-closed by construction: the only way to pass is a label that equals the full sha exactly, on the
exact image id we expect. Everything else (missing, empty, Go template's ``<no value>``, a short sha,
different case, whitespace, another commit) is a failure that says what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def image_not_held(
    what: str,
    *,
    task: str,
    node: str,
    ref: str,
    engine: str,
    expected_id: str,
    expected_digests: Sequence[str] | None,
) -> Verdict:
    """A task on another node runs ``ref`` (its spec's digest), and the engine we verify through (the
    swarm manager, ``engine``) holds no image by that digest: it cannot say which image id and revision
    the task runs. Always a failure (fail-closed): only an image the manager holds ties a digest to an
    image id, and the check by digest (runtimes/swarm.py, ``check_task``) needs the release's image and
    its digests there too. ``expected_digests`` are the release's image's digests on that engine (None:
    it does not hold that image either). The reason says which, because what to do differs: an image
    pruned from the manager (a drained manager runs no task, so prune removes it) is pulled again; a
    digest that is no digest of the release means the task runs something else."""
    evidence = {
        "expected_image_id": expected_id,
        "found_image_id": None,
        "task": task[:12],
        "node": node[:12],
        "task_image": ref,
        "engine": engine,
    }
    where = f"{what}: task {task[:12]} on node {node[:12]} runs {ref}"
    if expected_digests is None:
        why = (
            f"{where}; the swarm manager's engine ({engine}) holds no image by that digest, nor the "
            f"expected image {expected_id[:19]} (pruned there?), so it cannot tell which image and "
            f"revision the task runs: pull it on the manager ('docker pull {ref}') and run this again "
            "(until then it counts as unverified)"
        )
    else:
        known = ", ".join(expected_digests) or "no registry digest"
        why = (
            f"{where}, which is not a digest of the expected image {expected_id[:19]} (the swarm "
            f"manager's engine ({engine}) knows it as {known}) and an image that engine does not hold: "
            "the task runs something other than the release; roll back, or pull that digest on the "
            f"manager ('docker pull {ref}') to see what it is"
        )
    return Verdict.check(False, why, evidence)


def all_of(*checks: Verdict) -> Verdict:
    """The first failing check wins; on success the evidence of every check is kept."""
    details: dict[str, Any] = {}
    for check in checks:
        details.update(check.details)
        if not check.ok:
            return Verdict.check(False, check.reason, details)
    return Verdict.check(True, "; ".join(c.reason for c in checks), details)
