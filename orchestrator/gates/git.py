"""Gates about the app's source: is the validated commit real?"""

from __future__ import annotations

from orchestrator.gates import Gate, GateContext, Verdict, register
from orchestrator.machine import TO_STAGING


@register
class CommitExists(Gate):
    """A run names a sha that CI validated; if the app's repository does not hold that commit, whatever
    we would build is not what was validated (a typo, a force-push, the wrong repository)."""

    name = "commit_exists"
    edge = TO_STAGING
    order = 10

    def run(self, ctx: GateContext) -> Verdict:
        # Here, not at the top: the gates register with their package, and a promotion to prod, which
        # runs no git, need not load gitrepo (issue 12).
        from orchestrator import gitrepo

        repo = ctx.app.source
        if not gitrepo.commit_exists(repo, ctx.sha):
            return Verdict.failed(
                f"commit {ctx.sha} is not in {repo}: push it, or start a run with a sha from that repository",
                repository=str(repo),
            )
        return Verdict.passed(
            f"commit {ctx.sha[:12]} exists",
            repository=str(repo),
            subject=gitrepo.commit_subject(repo, ctx.sha),
        )
