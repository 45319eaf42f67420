"""Build keys of an app (context, dockerfile, target, secrets) and the builder settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import BuildSecret, Config, load_config
from orchestrator.errors import BadInput


def _load(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "orchestrator.toml"
    path.write_text(f'[apps.shop]\nsource = "src"\n{body}', encoding="utf-8")
    return load_config(path, env=env or {})


def _refused(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(BadInput) as caught:
        _load(tmp_path, body, env)
    return caught.value.message


def test_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    app = config.apps["shop"]
    assert (app.context, app.dockerfile, app.target, dict(app.secrets)) == (".", "Dockerfile", None, {})
    assert (config.settings.builder, config.settings.docker_cli) == ("auto", None)


def test_context_target_and_secrets(tmp_path: Path) -> None:
    app = _load(
        tmp_path,
        'context = "./services/web/"\ndockerfile = "../Dockerfile.web"\ntarget = "runtime"\n'
        'secrets = { npm = "env:NPM_TOKEN", ca = "file:certs/ca.pem" }\n',
    ).apps["shop"]
    assert (app.context, app.dockerfile, app.target) == ("services/web", "../Dockerfile.web", "runtime")
    assert app.secrets == {
        "npm": BuildSecret("npm", env="NPM_TOKEN"),
        "ca": BuildSecret("ca", file=(tmp_path / "certs" / "ca.pem").resolve()),
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('context = "../elsewhere"\n', "context = '../elsewhere' leaves the app's repository"),
        ('context = "/abs"\n', "context = '/abs' leaves the app's repository"),
        ('context = "app"\ndockerfile = "../../Dockerfile"\n', "leaves the app's repository"),
        ('target = "no spaces"\n', "target = 'no spaces' must name a stage"),
        ('secrets = { npm = "NPM_TOKEN" }\n', "secrets.npm = 'NPM_TOKEN' must be 'env:VARIABLE'"),
        ('secrets = { npm = "env:" }\n', "must be 'env:VARIABLE'"),
        ('secrets = { "a b" = "env:X" }\n', "secret ids are letters"),
        ('secrets = "env:X"\n', "secrets must be a table"),
    ],
)
def test_bad_build_keys_are_refused(tmp_path: Path, body: str, fragment: str) -> None:
    assert fragment in _refused(tmp_path, body)


@pytest.mark.parametrize("value", ["auto", "buildkit", "legacy", "BuildKit"])
def test_builder_setting(tmp_path: Path, value: str) -> None:
    assert _load(tmp_path, "", {"ORCH_BUILDER": value}).settings.builder == value.lower()


def test_builder_setting_is_validated(tmp_path: Path) -> None:
    message = _refused(tmp_path, "", {"ORCH_BUILDER": "kaniko"})
    assert "ORCH_BUILDER='kaniko' must be one of: auto, buildkit, legacy" in message


def test_docker_cli_setting(tmp_path: Path) -> None:
    settings = _load(tmp_path, "", {"ORCH_DOCKER_CLI": "/usr/bin/docker"}).settings
    assert settings.docker_cli == "/usr/bin/docker"


def test_a_secret_looking_build_arg_points_at_secrets(tmp_path: Path) -> None:
    (warning,) = _load(tmp_path, '[apps.shop.build_args]\nNPM_TOKEN = "x"\n').warnings
    assert "pass it as a build secret instead" in warning
    assert '{ npm_token = "env:NPM_TOKEN" }' in warning
