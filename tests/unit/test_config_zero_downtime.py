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
