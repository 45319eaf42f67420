"""``zero_downtime`` and ``proxy_image``: what the proxied runtime needs is refused at load (exit 2), not
found out on the first deploy when the app never answers behind the proxy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.config import CONFIG_FILENAME, DEFAULT_PROXY_IMAGE, load_config
from orchestrator.errors import BadInput


@pytest.fixture
def load(tmp_path: Path) -> Callable[[str], object]:
    def read(table: str) -> object:
        path = tmp_path / CONFIG_FILENAME
        path.write_text(f'[apps.shop]\nsource = "."\n{table}', encoding="utf-8")
        return load_config(path, env={}).app("shop")

    return read


def refused(load: Callable[[str], object], table: str) -> str:
    with pytest.raises(BadInput) as excinfo:
        load(table)
    assert excinfo.value.exit_code == 2
    return excinfo.value.message


def test_zero_downtime_with_container_port(load: Callable[[str], object]) -> None:
    app = load("zero_downtime = true\ncontainer_port = 8080\n")
    assert (app.zero_downtime, app.proxy_image, app.container_port) == (True, DEFAULT_PROXY_IMAGE, 8080)  # type: ignore[attr-defined]
    custom = load('zero_downtime = true\ncontainer_port = 8080\nproxy_image = "reg:5000/haproxy:2.8"\n')
    assert custom.proxy_image == "reg:5000/haproxy:2.8"  # type: ignore[attr-defined]


def test_off_by_default(load: Callable[[str], object]) -> None:
    assert load("").zero_downtime is False  # type: ignore[attr-defined]


def test_zero_downtime_without_container_port_is_refused(load: Callable[[str], object]) -> None:
    message = refused(load, "zero_downtime = true\n")
    assert "[apps.shop]" in message and "container_port" in message and "proxy" in message


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('zero_downtime = "yes please"\ncontainer_port = 8080\n', "zero_downtime"),
        ('proxy_image = "haproxy:2.8"\n', "only applies with zero_downtime"),
        ('zero_downtime = true\ncontainer_port = 8080\nproxy_image = ""\n', "proxy_image"),
        ('zero_downtime = true\ncontainer_port = 8080\nproxy_image = "a b"\n', "proxy_image"),
        (
            'zero_downtime = true\ncompose_file = "compose.yml"\nstaging_service = "a"\nprod_service = "b"\n',
            "compose",
        ),
    ],
)
def test_mistakes_are_refused(load: Callable[[str], object], table: str, says: str) -> None:
    assert says in refused(load, table)


ZERO_DOWNTIME = "zero_downtime = true\ncontainer_port = 8080\n"


def test_zero_downtime_on_an_ssh_engine_loads(load: Callable[[str], object]) -> None:
    """The remote engine's host loopback is reached through the engine's ssh connection (proxy.py
    EngineHost): allowed for the whole app's docker_host or one environment's, and for a unix:// engine
    (this machine's loopback)."""
    app = load(ZERO_DOWNTIME + 'docker_host = "ssh://deploy@db.example:2222"\n')
    assert app.zero_downtime and app.engine("prod").url == "ssh://deploy@db.example:2222"  # type: ignore[attr-defined]
    app = load(ZERO_DOWNTIME + '[apps.shop.prod]\ndocker_host = "ssh://deploy@prod.example"\n')
    assert app.engine("prod").url == "ssh://deploy@prod.example" and app.engine("staging").is_local  # type: ignore[attr-defined]
    assert load(ZERO_DOWNTIME + 'docker_host = "unix:///run/other/docker.sock"\n').zero_downtime  # type: ignore[attr-defined]


def test_zero_downtime_on_a_tcp_engine_is_refused_naming_ssh(load: Callable[[str], object]) -> None:
    """No ssh connection to reach the host's loopback through: refused at load, saying what to use."""
    message = refused(load, ZERO_DOWNTIME + '[apps.shop.prod]\ndocker_host = "tcp://127.0.0.1:2376"\n')
    assert "[apps.shop]" in message and "prod" in message and "tcp://" in message
    assert "ssh://user@host" in message and "zero_downtime" in message


def test_zero_downtime_on_ssh_without_multiplexing_is_refused(tmp_path: Path) -> None:
    """Without the shared connection (ssh_multiplex = false) there is no master to forward through."""
    path = tmp_path / CONFIG_FILENAME
    path.write_text(
        f'[orchestrator]\nssh_multiplex = false\n[apps.shop]\nsource = "."\n{ZERO_DOWNTIME}'
        'docker_host = "ssh://deploy@db.example"\n',
        encoding="utf-8",
    )
    with pytest.raises(BadInput) as excinfo:
        load_config(path, env={})
    assert excinfo.value.exit_code == 2
    assert "ssh_multiplex" in excinfo.value.message and "ORCH_SSH_MULTIPLEX" in excinfo.value.message
