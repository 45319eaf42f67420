"""Gates that build, check and promote the app's image on the real Docker engine.

Edge development -> deploy-staging: build the committed tree, prove the label, run it as staging,
check it. Edge deploy-staging -> deploy: ``check_staging_image_fresh`` proves staging still runs the
image this run's staging edge built and checked (else it rebuilds and re-checks staging), then that very
image (by id: build once) is promoted to prod and what runs there is verified;
if prod was touched and anything fails, the compensation restores the previous release.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator import health, views
from orchestrator.deploy import Deployed, Deployer
from orchestrator.errors import DockerError, GateFailed
from orchestrator.gates import (
    PROD_OUTCOME,
    ROLLBACK_PROD,
    Compensation,
    Gate,
    GateContext,
    ProdAction,
    ProdOutcome,
    ReleaseIntent,
    Verdict,
    first_line,
    register,
)
from orchestrator.machine import PROD, STAGING, TO_PROD, TO_STAGING

if TYPE_CHECKING:
    from orchestrator.steps.build import Build


def _build(ctx: GateContext) -> Build | Verdict:
    try:
        return ctx.deployer.build(ctx.sha)
    except GateFailed as exc:  # the commit lacks what the build needs
        return Verdict.failed(exc.message)
    except DockerError as exc:
        return Verdict.failed(
            ctx.deployer.redact(exc.message), build_log_tail=ctx.deployer.redact(exc.log)[-2000:]
        )


def _build_details(build: Build) -> dict[str, Any]:
    return {
        "image_id": build.image.id,
        "tag": build.tag,
        "build_s": round(build.duration_s, 3),
        "size_bytes": build.image.size,
    }


def _built(ctx: GateContext) -> Build:
    """The image build_image built on this edge (it runs first: without it no later gate runs)."""
    if ctx.build is None:
        raise RuntimeError(f"{ctx.edge.name}: no image was built before the gates that need one")
    return ctx.build


def _deploy(ctx: GateContext, env: str, image_id: str) -> Deployed:
    return ctx.deployer.deploy(env, image_id, ctx.sha, run_id=ctx.run_id)


def _release(ctx: GateContext, env: str, deployed: Deployed) -> ReleaseIntent:
    """What to record once ``env`` is known to run the run's image (after its checks, not before)."""
    assert deployed.published is not None
    published = deployed.published
    return ReleaseIntent(
        env, published.image_id, ctx.sha, digest=published.digest, override=deployed.override
    )


# development -> deploy-staging ------------------------------------------------------------------


@register
class BuildImage(Gate):
    """Build <app>:<sha> from exactly the committed tree, stamping GIT_SHA."""

    name = "build_image"
    edge = TO_STAGING
    order = 20
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        build = _build(ctx)
        if isinstance(build, Verdict):
            return build
        ctx.build = build
        return Verdict.passed(
            f"built {build.tag} as {build.image.id[:19]} in {build.duration_s:.1f}s", **_build_details(build)
        )


@register
class ImageRevision(Gate):
    """Fail closed before anything runs: an image that cannot prove its commit never reaches staging."""

    name = "image_revision"
    edge = TO_STAGING
    order = 30
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        build = _built(ctx)
        return ctx.deployer.verify_image(build.image.id, ctx.sha)


@register
class DeployStaging(Gate):
    name = "deploy_staging"
    edge = TO_STAGING
    order = 40
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        build = _built(ctx)
        deployed = _deploy(ctx, STAGING, build.image.id)
        if deployed.ok:
            ctx.add_release(_release(ctx, STAGING, deployed))
        return deployed.verdict


@register
class StagingCheck(Gate):
    name = "staging_check"
    edge = TO_STAGING
    order = 50
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        checked = ctx.deployer.staging_check(ctx.sha)
        if not checked.ok:
            return checked
        reason = "stub staging check passed against the fresh staging container"
        return Verdict.passed(reason, **checked.details)


# deploy-staging -> deploy -------------------------------------------------------------------------


@register
class CheckStagingImageFresh(Gate):
    """The image promoted to prod must be provably the validated commit, checked on staging moments ago.

    When staging still runs this run's own recorded staging image, healthy (``_live_staging``), that
    image is promoted as it is. Otherwise, layer A (liveness): rebuild from the commit, recreate
    staging, health, stub staging check. It never touches prod. Layer B (safety): the image to promote
    carries the full sha as its revision label and is the very image id this gate built: labels can be
    forged with any --build-arg, ids cannot.
    """

    name = "check_staging_image_fresh"
    edge = TO_PROD
    order = 10
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        settings = ctx.settings
        if not settings.freshness_applies_to(ctx.app.name):
            return self._disabled(ctx)
        live = _live_staging(ctx)
        if isinstance(live, Verdict):
            return live
        ctx.log.info("staging_stale_rebuilding", reason=live)
        build = _build(ctx)
        if isinstance(build, Verdict):
            return build
        details: dict[str, Any] = {**_build_details(build), "rebuilt_because": live}
        deployed = _deploy(ctx, STAGING, build.image.id)
        details.update(deployed.details)
        if not deployed.ok:
            return Verdict.failed(f"layer A: {deployed.reason}", **details)
        ctx.add_release(_release(ctx, STAGING, deployed))
        checked = ctx.deployer.staging_check(ctx.sha)
        details.update(checked.details)
        if not checked.ok:
            return Verdict.failed(f"layer A: {checked.reason}", **details)
        safety = ctx.deployer.verify_image(build.image.id, ctx.sha)
        details.update(safety.details)
        if not safety.ok:
            return Verdict.failed(f"layer B: {safety.reason}", **details)
        ctx.promote_image_id = build.image.id
        return Verdict.passed(
            f"fresh staging image {build.image.id[:19]} healthy, checked, {safety.reason}", **details
        )

    def _disabled(self, ctx: GateContext) -> Verdict:
        why = (
            "ORCH_IMAGE_FRESHNESS_ENABLED is off"
            if not ctx.settings.image_freshness_enabled
            else f"{ctx.app.name} is not in ORCH_IMAGE_FRESHNESS_REPOS"
        )
        ctx.log.warning("image_freshness_check_disabled", reason=why)
        # Promote the image id this run's own staging edge built, checked and recorded, never what a
        # tag names now: anyone with access to the engine can tag an image `<app>:<sha>` and forge its
        # revision label, and verify_prod proves only the label. No recorded image: fail closed.
        staged = [r for r in ctx.run_releases if r.environment == STAGING and r.revision == ctx.sha]
        if not staged:
            return Verdict.failed(
                f"{why}, and run {ctx.run_id} has no recorded staging image to promote: advance it to "
                "deploy-staging again, or enable the freshness check so it rebuilds"
            )
        image_id = staged[-1].image_id
        if ctx.deployer.engine.image(image_id) is None:
            return Verdict.failed(
                f"{why}, and run {ctx.run_id}'s staging image {image_id[:19]} is gone from the engine: "
                "advance a new run, or enable the freshness check so it rebuilds"
            )
        ctx.promote_image_id = image_id
        return Verdict.skipped(
            f"{why}: staging image not rebuilt; promoting run {ctx.run_id}'s recorded staging image",
            promote_image_id=image_id,
            staging_release=staged[-1].id,
        )


def _live_staging(ctx: GateContext) -> Verdict | str:
    """The fast path of the freshness check: staging still runs, healthy, the very image this run's
    staging edge built, guarded, checked and recorded, so that image is promoted without a rebuild.

    Every fact is read now, not trusted from the record: staging's latest release is this run's own
    (nobody deployed staging since), its container runs that image id (ids cannot be forged, labels
    can), the image carries the full sha in its revision label, /version serves the sha where the app
    has one, and the health path answers. Anything else, an error included, returns why staging is
    stale, and the gate rebuilds and re-checks staging from the commit as before (fail closed)."""
    staged = [r for r in ctx.run_releases if r.environment == STAGING and r.revision == ctx.sha]
    if not staged:
        return f"run {ctx.run_id} has no recorded staging release"
    release = staged[-1]
    latest = ctx.previous_releases.get(STAGING)
    if latest is None or latest.id != release.id:
        return f"staging was deployed again after run {ctx.run_id}'s release {release.id}"
    d = ctx.deployer
    try:
        check = d.verify_running(STAGING, release.image_id, ctx.sha)
    except DockerError as exc:
        return f"staging could not be inspected: {exc.message}"
    if not check.ok:
        return f"staging no longer runs release {release.id}: {check.reason}"
    probe = health.get(d.base_url(STAGING) + ctx.app.health_path)
    if not probe.ok:
        return f"staging's {ctx.app.health_path} answers {probe.status or probe.error}"
    ctx.promote_image_id = release.image_id
    return Verdict.passed(
        f"staging still runs run {ctx.run_id}'s checked image {release.image_id[:19]}, healthy, "
        f"revision {ctx.sha[:12]}: promoted without a rebuild",
        **check.details,
        image_id=release.image_id,
        staging_release=release.id,
        rebuilt=False,
    )


@register
class PromoteProd(Gate):
    """Retag the checked image for prod (no rebuild) and swap prod's container to it."""

    name = "promote_prod"
    edge = TO_PROD
    order = 20
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        image_id = ctx.promote_image_id
        if image_id is None:
            return Verdict.failed(
                f"no image of {ctx.sha[:12]} to promote: advance this run to deploy-staging again, "
                "or enable ORCH_IMAGE_FRESHNESS_ENABLED so the gate rebuilds it"
            )
        d = ctx.deployer
        before = d.current(PROD)
        evidence: dict[str, Any] = {
            "prod_before": {"container_id": before.id, "image_id": before.image_id} if before else None,
        }
        # From here prod is touched: whatever fails later must restore it.
        ctx.compensations.append(Compensation(ROLLBACK_PROD, lambda: restore_prod(ctx)))
        deployed = _deploy(ctx, PROD, image_id)
        evidence.update(deployed.details)
        if not deployed.ok:
            return Verdict.failed(f"prod: {deployed.reason}", **evidence)
        ctx.prod_release = _release(ctx, PROD, deployed)
        return Verdict.passed(f"{deployed.reason} with {image_id[:19]}", **evidence)


@register
class VerifyProd(Gate):
    """Post-deploy verification: catches the deploy that reports success while the old image keeps running."""

    name = "verify_prod"
    edge = TO_PROD
    order = 30
    needs_docker = True

    def run(self, ctx: GateContext) -> Verdict:
        image_id, release = ctx.promote_image_id, ctx.prod_release
        if image_id is None or release is None:
            return Verdict.failed("prod verification: promote_prod did not put an image on prod")
        check = ctx.deployer.verify_running(PROD, image_id, ctx.sha)
        if not check.ok:
            return Verdict.failed(f"prod verification: {check.reason}", **check.details)
        ctx.add_release(release)
        return Verdict.passed(f"prod runs {image_id[:19]} with revision {ctx.sha[:12]}", **check.details)


def restore_prod(ctx: GateContext) -> Verdict:
    """Put prod back on the previous release and verify it; with none, stop prod rather than leave an
    unverified image serving."""
    with ctx.steps.phase("restore"):
        return _restore_prod(ctx)


def _restore_prod(ctx: GateContext) -> Verdict:
    d: Deployer = ctx.deployer
    reason = first_line(ctx.failure_reason or "promotion failed")
    previous = ctx.previous_releases.get(PROD)
    if previous is None:
        stopped = d.stop(PROD)
        leftovers = d.unpublish(PROD)
        outcome = ProdOutcome(ProdAction.STOPPED, None, "stopped: no previous release to restore")
        return Verdict.passed(
            f"no previous prod release to restore: prod stopped ({d.container(PROD)} "
            f"{'removed' if stopped else 'was not running'}), its tags removed"
            + "".join(f"; {note}" for note in leftovers),
            restored_release=None,
            leftovers=leftovers,
            **{PROD_OUTCOME: views.prod_outcome(outcome)},
        )
    restored = d.redeploy(PROD, previous, run_id=ctx.run_id)
    if not restored.ok:
        why = first_line(restored.reason)
        if not d.ensure_image(PROD, previous):
            d.stop(PROD)
            outcome = ProdOutcome(
                ProdAction.STOPPED, None, f"stopped: release {previous.id} could not be restored ({why})"
            )
            head, sep, evidence = restored.reason.partition("\n")
            return Verdict.failed(
                f"{head}: prod stopped; redeploy a known-good run{sep}{evidence}",
                **restored.details,
                **{PROD_OUTCOME: views.prod_outcome(outcome)},
            )
        outcome = ProdOutcome(
            ProdAction.NOT_RESTORED,
            None,
            f"NOT restored to release {previous.id}: {why}; see 'orchestrator status {ctx.app.name}', "
            f"then 'orchestrator rollback {ctx.app.name} --env prod'",
        )
        return Verdict.failed(
            f"restoring prod: {restored.reason}",
            **restored.details,
            **{PROD_OUTCOME: views.prod_outcome(outcome)},
        )
    ctx.add_release(ReleaseIntent.rollback(PROD, previous, reason=reason, override=restored.override))
    outcome = ProdOutcome(
        ProdAction.RESTORED,
        previous.id,
        f"restored to release {previous.id} ({previous.revision[:12]}), verified",
    )
    return Verdict.passed(
        f"prod restored: {restored.reason}",
        restored_release=previous.id,
        **restored.details,
        **{PROD_OUTCOME: views.prod_outcome(outcome)},
    )
