"""Reading Dockerfiles (builders.py): which BuildKit-only features one uses and which images it pulls.

Pure functions: they decide whether the legacy builder refuses a Dockerfile (naming the feature) and
whether a failed build was a registry the engine could not reach (exit 4) rather than a broken build.
"""

from __future__ import annotations

import pytest

from orchestrator import builders
from orchestrator.builders import BuilderKind, BuildKitCli
from orchestrator.errors import InfraUnavailable

MODERN = """\
# syntax=docker/dockerfile:1.4
ARG BASE=127.0.0.1:5000/base:1
FROM --platform=$BUILDPLATFORM ${BASE} AS build
RUN --mount=type=cache,target=/root/.cache \\
    --mount=type=secret,id=npm make
COPY --link --from=build /out /out
FROM scratch
COPY --chmod=755 --from=build /out/app /app
RUN <<END
echo hi
END
"""


def test_every_buildkit_feature_is_named_with_its_line() -> None:
    assert builders.buildkit_features(MODERN) == [
        "the '# syntax=docker/dockerfile:1.4' directive",
        "FROM --platform (line 3)",
        "RUN --mount (line 4)",
        "COPY --link (line 6)",
        "COPY --chmod (line 8)",
        "a heredoc in RUN (line 9)",
    ]


def test_a_classic_dockerfile_needs_nothing_from_buildkit() -> None:
    classic = (
        "# a comment, not a directive: syntax=whatever below the first instruction is ignored\n"
        "FROM python:3.12 AS base\nARG GIT_SHA\nRUN pip install -r requirements.txt \\\n"
        "    && echo --mount=type=cache is just text here\nCOPY --from=base /a /b\n"
        "COPY --chown=1000:1000 . /app\n"
    )
    assert builders.buildkit_features(classic) == []


def test_only_link_and_heredocs_need_the_newer_frontend() -> None:
    assert builders.newer_frontend_features(MODERN) == ["COPY --link (line 6)", "a heredoc in RUN (line 9)"]


def test_escape_directive_changes_the_continuation_character() -> None:
    text = "# escape=`\nFROM scratch\nRUN --mount=type=cache,target=/c `\n    build\n"
    assert builders.buildkit_features(text) == ["RUN --mount (line 3)"]


def test_base_images_skip_scratch_and_stages_and_substitute_global_args() -> None:
    assert builders.base_images(MODERN) == ["docker/dockerfile:1.4", "127.0.0.1:5000/base:1"]
    assert builders.base_images(MODERN, {"BASE": "registry.example/app:2"})[1] == "registry.example/app:2"
    staged = "FROM alpine:3 AS one\nFROM one\nFROM ONE AS two\nFROM $UNKNOWN\nFROM alpine:3\n"
    assert builders.base_images(staged) == ["alpine:3"]


@pytest.mark.parametrize(
    ("ref", "host"),
    [
        ("python:3.12", "docker.io"),
        ("library/python", "docker.io"),
        ("127.0.0.1:5000/x/y:1", "127.0.0.1:5000"),
        ("ghcr.io/org/app@sha256:abc", "ghcr.io"),
        ("localhost/app", "localhost"),
    ],
)
def test_registry_host(ref: str, host: str) -> None:
    assert builders.registry_host(ref) == host


def test_an_unreachable_registry_is_found_in_either_builders_words() -> None:
    legacy = 'Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused'
    buildkit = (
        "failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to do "
        'request: Head "http://127.0.0.1:9/v2/x/manifests/1": dial tcp 127.0.0.1:9: connect: '
        "connection refused"
    )
    for said in (legacy, buildkit):
        found = builders.unreachable_base_image(said, ["alpine:3", "127.0.0.1:9/x:1"], lambda ref: False)
        assert found == ("127.0.0.1:9/x:1", "127.0.0.1:9")
    error = builders.unreachable_error("127.0.0.1:9/x:1", "127.0.0.1:9", buildkit)
    assert error.exit_code == 4
    assert error.message.startswith(
        "base image 127.0.0.1:9/x:1 could not be pulled: the Docker engine could not reach its registry "
        "127.0.0.1:9 ("
    )


def test_a_registry_that_answers_no_or_a_present_image_is_not_unreachable() -> None:
    refused = "pull access denied for nothing/here, repository does not exist or may require 'docker login'"
    assert builders.unreachable_base_image(refused, ["nothing/here"], lambda ref: False) is None
    down = "dial tcp 10.0.0.1:443: i/o timeout"
    assert builders.unreachable_base_image(down, ["alpine:3"], lambda ref: True) is None
    assert builders.unreachable_base_image(down, ["alpine:3"], lambda ref: False) == ("alpine:3", "docker.io")


def test_buildkit_cli_argv() -> None:
    buildx = BuildKitCli("/usr/bin/docker", buildx=True)
    embedded = BuildKitCli("/usr/bin/docker", buildx=False)
    assert (buildx.argv, buildx.env) == (("/usr/bin/docker", "buildx", "build", "--load"), {})
    assert (embedded.argv, embedded.env) == (("/usr/bin/docker", "build"), {"DOCKER_BUILDKIT": "1"})


def test_a_secret_is_passed_by_name_never_by_value() -> None:
    assert builders.Secret("npm", env="NPM_TOKEN").flag() == "id=npm,env=NPM_TOKEN"
    assert builders.Secret("ca", file="/run/ca.pem").flag() == "id=ca,src=/run/ca.pem"


def test_choosing_a_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = BuildKitCli("/x/docker", buildx=False)
    monkeypatch.setattr(builders, "find_buildkit_cli", lambda override=None: cli)
    assert builders.choose("legacy", None, lambda: True).kind is BuilderKind.LEGACY
    assert builders.choose("auto", None, lambda: True).cli == cli
    fallback = builders.choose("auto", None, lambda: False)
    assert fallback.kind is BuilderKind.LEGACY and "does not run BuildKit" in fallback.why
    monkeypatch.setattr(builders, "find_buildkit_cli", lambda override=None: None)
    assert builders.choose("auto", "/opt/docker", lambda: True).why == (
        "legacy builder: ORCH_DOCKER_CLI=/opt/docker has neither buildx nor an embedded BuildKit"
    )
    with pytest.raises(InfraUnavailable, match="ORCH_BUILDER=buildkit but no docker CLI on PATH"):
        builders.choose("buildkit", None, lambda: True)
