"""Whether a run's staging build is sent before its edge asks for it, and from where (issue 12): the
deciding half of steps/ahead.py, which does the sending.

It imports nothing but the config and the store, which every command has open anyway, so that `deploy`
and `run start` can send the build before the edges' modules (gates, records, runtimes, claims) are
imported: the build is on the critical path of both, and the engine builds while the rest of the
process gets ready. Even earlier, before the database is opened, ``source_read_early`` starts the
``git archive`` that build reads. Three questions, one method each:

- ``send``: the build this process sends and its own build step takes (`deploy`; `advance` when `run
  start` parked nothing);
- ``park``: the build `run start` sends and parks for the staging advance of a run not recorded yet;
- ``parked``: the build `run start` parked for this run, if there is one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from orchestrator.config import AppConfig, Config
from orchestrator.machine import ENVIRONMENTS, STAGING

if TYPE_CHECKING:
    from orchestrator.steps.ahead import BuildAhead, ParkedAhead
    from orchestrator.store.repository import Store


@contextmanager
def source_read_early(config: Config, app: str, sha: str, *, at_run_start: bool) -> Iterator[None]:
    """Around `run start` or `deploy`: ``git archive`` of the commit the staging build will read starts
    first (gitrepo.start_archive), before the database is opened and the build's modules are imported,
    and runs in its own process meanwhile. Only where a build is likely to be sent ahead (StagingBuilds
    decides, once the database is open); anything this cannot make sense of is left to the command,
    which says what is wrong. An archive the command did not take (it sent no build) ends with it."""
    import os

    from orchestrator import build_context, gitrepo
    from orchestrator.errors import OrchestratorError

    try:
        found, sha = config.app(app), gitrepo.parse_sha(sha)
    except OrchestratorError:
        found = None
    if (
        found is not None
        and (config.settings.build_at_run_start or not at_run_start)  # `deploy` always sends its own
        and STAGING not in found.require_approval
        and not found.secrets
        and found.builds_on.is_local
        and build_context.local_socket(os.environ) is not None
    ):
        gitrepo.start_archive(found.source, sha)
    try:
        yield
    finally:
        gitrepo.discard_started()


def recorded_images(store: Store, app: AppConfig) -> list[str]:
    """The images this orchestrator built and released for ``app``, newest first: the builds' cache may
    reuse their layers and nothing else (steps/build.py, CachePolicy)."""
    found = [
        release for env in ENVIRONMENTS for release in store.releases(app.name, env, limit=app.keep_releases)
    ]
    return [r.image_id for r in sorted(found, key=lambda r: r.id, reverse=True)]


class StagingBuilds:
    """Sends an app's staging build early where the edge's own build step would make the very same
    build and take it; anywhere else answers None and the build step builds as always."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def send(self, app: AppConfig, sha: str) -> BuildAhead | None:
        """The staging build of ``sha``, sent now from this process."""
        if not self._worth_sending(app):
            return None
        from orchestrator.steps.ahead import BuildAhead

        return BuildAhead.start(app, self.config.settings, sha, recorded_images(self.store, app))

    def park(self, app: AppConfig, sha: str) -> BuildAhead | None:
        """The staging build of ``sha`` sent from a park (parking.py), for `run start` to hand over to
        the run it records next (BuildAhead.park); None where `build_at_run_start` is off."""
        if not self.config.settings.build_at_run_start or not self._worth_sending(app):
            return None
        from orchestrator import parking
        from orchestrator.steps.ahead import BuildAhead

        return BuildAhead.start(
            app, self.config.settings, sha, recorded_images(self.store, app), park=parking.root()
        )

    def parked(self, app: AppConfig, sha: str, run_id: int) -> ParkedAhead | None:
        """The build `run start` parked for run ``run_id``, claimed for this process."""
        from orchestrator.steps.ahead import ParkedAhead

        return ParkedAhead.find(app, self.config.settings, run_id, sha)

    def _worth_sending(self, app: AppConfig) -> bool:
        """Whether the staging edge is about to build, now: it always does (its ``build_image`` gate),
        unless it waits for an approval first or staging is held (by another run, or by hand: the edge
        waits or is refused). A build sent and not taken costs the engine's time, never a wrong result:
        the process that sent it cancels it when it ends."""
        if STAGING in app.require_approval:
            return False
        return not self.store.locks(app.name, [STAGING])
