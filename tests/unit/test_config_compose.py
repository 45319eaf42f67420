"""Compose and registry keys: validated up front so a deploy never starts half-configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import CONFIG_FILENAME, load_config
from orchestrator.errors import BadInput

COMPOSE_APP = (
    '[apps.shop]\nsource = "."\ncompose_file = "deploy/docker-compose.yml"\n'
    'staging_service = "web-staging"\nprod_service = "web"\n'
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text, encoding="utf-8")
    return path


def test_compose_app_defaults(tmp_path: Path) -> None:
    app = load_config(write(tmp_path, COMPOSE_APP), env={}).app("shop")
    assert app.is_compose
    assert app.compose_file == (tmp_path / "deploy" / "docker-compose.yml").resolve()
    # The override sits beside the compose file, never inside the primary file.
    assert (
        app.override_file
        == (tmp_path / "deploy" / ".deploy" / "docker-compose.override.deploy.yml").resolve()
    )
    assert (app.service("staging"), app.service("prod")) == ("web-staging", "web")
    assert app.pin_digests is True and app.keep_releases == 5 and app.registry is None


def test_registry_from_env_applies_to_every_app_and_app_key_wins(tmp_path: Path) -> None:
    text = (
        COMPOSE_APP
        + '[apps.blog]\nsource = "."\nstaging_port = 9101\nprod_port = 9100\nregistry = "reg.local:5000/ns"\n'
    )
    cfg = load_config(
        write(tmp_path, text), env={"ORCH_REGISTRY": "127.0.0.1:5000", "ORCH_KEEP_RELEASES": "3"}
    )
    assert cfg.app("shop").registry == "127.0.0.1:5000"
    assert cfg.app("blog").registry == "reg.local:5000/ns"
    assert cfg.app("shop").keep_releases == 3


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('[apps.x]\nsource = "."\nstaging_service = "a"\nprod_service = "b"\n', "need compose_file"),
        ('[apps.x]\nsource = "."\ncompose_file = "c.yml"\nprod_service = "b"\n', "staging_service must name"),
        (
            '[apps.x]\nsource = "."\ncompose_file = "c.yml"\nstaging_service = "a"\nprod_service = "a"\n',
            "must be different services",
        ),
        ('[apps.x]\nsource = "."\npin_digests = false\n', "only applies to compose apps"),
        ('[apps.x]\nsource = "."\nregistry = "http://127.0.0.1:5000"\n', "without a scheme"),
        ('[apps.x]\nsource = "."\nkeep_releases = 0\n', "whole number >= 1"),
        (COMPOSE_APP + 'pin_digests = "sometimes"\n', "not a boolean"),
    ],
)
def test_bad_compose_and_registry_keys_are_bad_input(tmp_path: Path, extra: str, fragment: str) -> None:
    with pytest.raises(BadInput) as exc:
        load_config(write(tmp_path, extra), env={})
    assert fragment in exc.value.message


def test_bad_registry_variable_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="ORCH_REGISTRY='https://x' must be host"):
        load_config(write(tmp_path, COMPOSE_APP), env={"ORCH_REGISTRY": "https://x"})


def test_staging_gets_its_own_project_unless_told_to_share(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, COMPOSE_APP), env={}).app("shop").staging_project == "own"
    shared = load_config(write(tmp_path, COMPOSE_APP + 'staging_project = "prod"\n'), env={})
    assert shared.app("shop").staging_project == "prod"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("container_port = 8080\n", "container_port does not apply to a compose app"),
        ('env = { TOKEN = "x" }\n', "env does not apply to a compose app"),
        ('staging_project = "shared"\n', 'staging_project must be "own"'),
    ],
)
def test_keys_a_compose_app_cannot_honour_are_refused(tmp_path: Path, extra: str, fragment: str) -> None:
    """A key the compose file decides instead (a port mapping, an environment variable) would be
    silently ignored: the user would believe it is in effect."""
    with pytest.raises(BadInput, match=fragment):
        load_config(write(tmp_path, COMPOSE_APP + extra), env={})


def test_staging_project_needs_a_compose_app(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="staging_project only applies to compose apps"):
        load_config(write(tmp_path, '[apps.x]\nsource = "."\nstaging_project = "own"\n'), env={})
