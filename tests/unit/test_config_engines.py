"""Per-environment Docker engines in orchestrator.toml (docker_host, [apps.X.<env>], build_host,
ORCH_DOCKER_HOST_<ENV>): every URL checked at load (exit 2), and a message never repeats a credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import (
    CONFIG_FILENAME,
    LOCAL_ENGINE,
    EngineTarget,
    TlsFiles,
    check_registry_transfer,
    load_config,
)
from orchestrator.errors import BadInput


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_FILENAME
    path.write_text('[apps.web]\nsource = "."\n' + text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return load_config(write(tmp_path, text), env=env or {}).app("web")


def bad(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(BadInput) as exc:
        load(tmp_path, text, env)
    assert exc.value.exit_code == 2
    return exc.value.message


def test_no_docker_host_is_the_local_engine_everywhere(tmp_path: Path) -> None:
    app = load(tmp_path, "")
    assert app.engine("staging") == app.engine("prod") == app.builds_on == LOCAL_ENGINE
    assert app.remote_environments == ()
    assert LOCAL_ENGINE.address == "127.0.0.1" and LOCAL_ENGINE.host == "local"


def test_prod_on_a_remote_host_over_ssh(tmp_path: Path) -> None:
    app = load(tmp_path, '[apps.web.prod]\ndocker_host = "ssh://deploy@prod.example.com:2222"\n')
    prod = app.engine("prod")
    assert prod == EngineTarget("ssh://deploy@prod.example.com:2222")
    assert (prod.host, prod.address) == ("deploy@prod.example.com:2222", "prod.example.com")
    assert app.engine("staging") == LOCAL_ENGINE and app.builds_on == LOCAL_ENGINE
    assert app.remote_environments == ("prod",)


def test_app_docker_host_applies_to_both_and_builds_there(tmp_path: Path) -> None:
    app = load(tmp_path, 'docker_host = "ssh://box"\n')
    assert app.engine("staging") == app.engine("prod") == app.builds_on == EngineTarget("ssh://box")
    assert app.remote_environments == ()  # one engine: no registry transfer needed


def test_build_host_moves_the_build(tmp_path: Path) -> None:
    app = load(
        tmp_path,
        'build_host = "ssh://builder"\n[apps.web.prod]\ndocker_host = "ssh://prod"\n',
    )
    assert app.builds_on.url == "ssh://builder"
    assert app.remote_environments == ("staging", "prod")


def test_environment_variable_overrides_the_config(tmp_path: Path) -> None:
    app = load(
        tmp_path,
        '[apps.web.prod]\ndocker_host = "ssh://prod"\n',
        env={"ORCH_DOCKER_HOST_PROD": "ssh://root@127.0.0.1:2200", "ORCH_DOCKER_HOST_STAGING": ""},
    )
    assert app.engine("prod").url == "ssh://root@127.0.0.1:2200"
    assert app.engine("staging") == LOCAL_ENGINE


def test_tcp_with_tls_files_relative_to_the_config(tmp_path: Path) -> None:
    app = load(
        tmp_path,
        '[apps.web.prod]\ndocker_host = "tcp://10.0.0.5:2376"\n'
        'tls_ca = "certs/ca.pem"\ntls_cert = "certs/cert.pem"\ntls_key = "certs/key.pem"\n'
        'health_host = "203.0.113.7"\n',
    )
    prod = app.engine("prod")
    assert prod.tls == TlsFiles(
        (tmp_path / "certs/ca.pem").resolve(),
        (tmp_path / "certs/cert.pem").resolve(),
        (tmp_path / "certs/key.pem").resolve(),
    )
    assert prod.address == "203.0.113.7"  # health checks go to the NAT address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('docker_host = "http://host:2375"', "must start with ssh://, tcp:// or unix://"),
        ('docker_host = "host:22"', "must start with ssh://, tcp:// or unix://"),
        ('docker_host = "ssh://"', "must name a host"),
        ('docker_host = "ssh://deploy@host:99999"', "port"),
        ('docker_host = "ssh://deploy@host/var/run"', "must not have a path"),
        ('docker_host = "ssh://deploy@host?x=1"', "query"),
        ('docker_host = "tcp://10.0.0.5:2375"', "plain tcp:// to another machine"),
        ('docker_host = "tcp://10.0.0.5"', "must give the engine's port"),
        ('docker_host = "unix://relative.sock"', "unix:///absolute/path"),
        ('docker_host = ""', "must be a Docker engine URL"),
        ("docker_host = 5", "must be a Docker engine URL"),
        ('docker_host = "ssh://host"\ntls_ca = "ca.pem"', "go together"),
        (
            'docker_host = "ssh://host"\ntls_ca = "a"\ntls_cert = "b"\ntls_key = "c"',
            "tcp:// engines only",
        ),
        ('health_host = "a b"', "health_host must be a host name"),
        ('health_host = "10.0.0.1"', "need a docker_host"),
        ('[apps.web.prod]\ndockerhost = "ssh://x"', "unknown key(s) dockerhost"),
        ("prod = 3", "must be a table"),
        ('build_host = "ftp://x"', "build_host must start with"),
    ],
)
def test_bad_engine_settings_are_refused_at_load(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in bad(tmp_path, text + "\n")


def test_a_password_in_the_url_is_refused_without_repeating_it(tmp_path: Path) -> None:
    message = bad(tmp_path, '[apps.web.prod]\ndocker_host = "ssh://deploy:hunter2@host"\n')
    assert "carries a password" in message and "[apps.web.prod].docker_host" in message
    assert "hunter2" not in message


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    message = bad(tmp_path, "", env={"ORCH_DOCKER_HOST_PROD": "prod.example.com"})
    assert message.startswith(str(tmp_path / CONFIG_FILENAME)) and "ORCH_DOCKER_HOST_PROD" in message


def test_compose_apps_stay_on_the_local_engine(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    message = bad(
        tmp_path,
        'compose_file = "docker-compose.yml"\nstaging_service = "a"\nprod_service = "b"\n'
        '[apps.web.prod]\ndocker_host = "ssh://prod"\n',
    )
    assert "direct-container apps only" in message


def test_environments_on_other_hosts_may_share_a_port(tmp_path: Path) -> None:
    app = load(
        tmp_path, 'staging_port = 8500\nprod_port = 8500\n[apps.web.prod]\ndocker_host = "ssh://prod"\n'
    )
    assert app.staging_port == app.prod_port == 8500
    assert "both 8500" in bad(tmp_path, "staging_port = 8500\nprod_port = 8500\n")


def test_different_engines_without_a_registry_are_refused_before_anything_runs(tmp_path: Path) -> None:
    app = load(tmp_path, '[apps.web.prod]\ndocker_host = "ssh://deploy@prod"\n')
    with pytest.raises(BadInput) as exc:
        check_registry_transfer(app)
    assert "set [apps.web].registry (or ORCH_REGISTRY)" in exc.value.message
    assert "prod on deploy@prod" in exc.value.message
    check_registry_transfer(
        load(tmp_path, 'registry = "127.0.0.1:5000"\n[apps.web.prod]\ndocker_host = "ssh://p"\n')
    )
    check_registry_transfer(load(tmp_path, 'docker_host = "ssh://one"\n'))  # one engine: no registry needed
