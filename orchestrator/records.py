"""Persisting a release: the store row plus, for compose apps, the override it applied kept as an anchor.

Shared by promotions, rollbacks and recovery so that every way an environment changes leaves the same
record.
"""

from __future__ import annotations

from orchestrator.config import AppConfig
from orchestrator.gates import ReleaseIntent
from orchestrator.store.repository import ReleaseRecord, Store


def record_release(
    store: Store, app: AppConfig, intent: ReleaseIntent, *, run_id: int | None, transition_id: int | None
) -> ReleaseRecord:
    """Persist a release and, for compose apps, keep the override it applied as a rollback anchor."""
    compose_sha256 = None
    if app.compose_file is not None:
        # Only for a compose app: every other app's `advance --to deploy` need not load compose.py
        # (issue 12).
        from orchestrator.compose import file_digest

        compose_sha256 = file_digest(app.compose_file)
    release = store.record_release(
        app=app.name,
        environment=intent.environment,
        image_id=intent.image_id,
        revision=intent.revision,
        run_id=run_id,
        transition_id=transition_id,
        kind=intent.kind,
        reason=intent.reason,
        digest=intent.digest,
        compose_sha256=compose_sha256,
        engine=app.engine(intent.environment).host,
    )
    if intent.override is not None and app.override_file is not None:
        from orchestrator.compose import keep_anchor

        keep_anchor(app.override_file, intent.environment, release.id, intent.override, app.keep_releases)
    return release
