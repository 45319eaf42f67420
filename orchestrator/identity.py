"""Who is acting, and from which CI job: what every recorded run, transition, lock, freeze and rollback
carries so that "who deployed this, and from where" has an answer months later.

An operator's ``--actor`` wins; in CI the platform's own variables name the person (or bot) who
triggered the job and give a link to it; elsewhere the OS user. The link matters more than the name:
CI runners often run as one service user, and the job page is where the commit, the log and the
trigger are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CiJob:
    """What the CI platform says about the job this process runs in."""

    platform: str
    actor: str | None
    url: str | None


def _github(env: Mapping[str, str]) -> CiJob | None:
    if env.get("GITHUB_ACTIONS") != "true" and not env.get("GITHUB_RUN_ID"):
        return None
    server, repo, run = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
    url = f"{server.rstrip('/')}/{repo}/actions/runs/{run}" if server and repo and run else None
    return CiJob("github", env.get("GITHUB_ACTOR"), url)


def _gitlab(env: Mapping[str, str]) -> CiJob | None:
    if env.get("GITLAB_CI") != "true" and not env.get("CI_JOB_URL"):
        return None
    return CiJob("gitlab", env.get("GITLAB_USER_LOGIN"), env.get("CI_JOB_URL"))


def _buildkite(env: Mapping[str, str]) -> CiJob | None:
    if env.get("BUILDKITE") != "true":
        return None
    build = env.get("BUILDKITE_BUILD_URL")
    job = env.get("BUILDKITE_JOB_ID")
    url = f"{build}#{job}" if build and job else build
    actor = env.get("BUILDKITE_BUILD_CREATOR_EMAIL") or env.get("BUILDKITE_BUILD_CREATOR")
    return CiJob("buildkite", actor, url)


def _jenkins(env: Mapping[str, str]) -> CiJob | None:
    # BUILD_URL alone is Jenkins' mark; the build-user plugin adds BUILD_USER_ID.
    if not env.get("JENKINS_URL") and not env.get("BUILD_URL"):
        return None
    return CiJob("jenkins", env.get("BUILD_USER_ID") or env.get("BUILD_USER"), env.get("BUILD_URL"))


def _circleci(env: Mapping[str, str]) -> CiJob | None:
    if env.get("CIRCLECI") != "true":
        return None
    return CiJob("circleci", env.get("CIRCLE_USERNAME"), env.get("CIRCLE_BUILD_URL"))


def _azure(env: Mapping[str, str]) -> CiJob | None:
    if not env.get("TF_BUILD"):
        return None
    base, project, build = (
        env.get("SYSTEM_COLLECTIONURI"),
        env.get("SYSTEM_TEAMPROJECT"),
        env.get("BUILD_BUILDID"),
    )
    url = None
    if base and project and build:
        url = f"{base.rstrip('/')}/{project}/_build/results?buildId={build}"
    return CiJob("azure", env.get("BUILD_REQUESTEDFOREMAIL") or env.get("BUILD_REQUESTEDFOR"), url)


_PLATFORMS = (_github, _gitlab, _buildkite, _jenkins, _circleci, _azure)


def ci_job(env: Mapping[str, str] | None = None) -> CiJob | None:
    """The CI job this process runs in, or None outside CI."""
    env = os.environ if env is None else env
    for detect in _PLATFORMS:
        job = detect(env)
        if job is not None:
            return CiJob(job.platform, (job.actor or "").strip() or None, (job.url or "").strip() or None)
    return None


def os_user() -> str:
    import getpass  # with termios: only where no --actor and no CI names who acts

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def default_actor(env: Mapping[str, str] | None = None) -> str:
    """The CI's name for who triggered the job, else the OS user (``--actor`` overrides both)."""
    job = ci_job(env)
    return job.actor if job is not None and job.actor else os_user()


MAX_CI_URL = 500  # the column width


def ci_url(env: Mapping[str, str] | None = None) -> str | None:
    """A link to the CI job, recorded beside the actor; None outside CI. Only http(s) links of at most
    the column's width are kept: the dashboard renders it as a link, and ``javascript:`` is not one."""
    job = ci_job(env)
    if job is None or job.url is None or len(job.url) > MAX_CI_URL:
        return None
    if not job.url.lower().startswith(("https://", "http://")):
        return None
    return job.url
