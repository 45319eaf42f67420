"""Which engine each part of a promotion talks to (engines.py, service.common.LazyEngine): pure logic
with stand-in engines; the Docker behaviour itself is tested against two real engines
(tests/integration/test_remote.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import LOCAL_ENGINE, AppConfig, EngineTarget
from orchestrator.engines import AppEngines
from orchestrator.errors import InfraUnavailable
from orchestrator.service.common import LazyEngine

PROD = EngineTarget("ssh://deploy@prod:22")
BUILDER = EngineTarget("ssh://builder")


class Stand:
    """Stands in for a DockerEngine: remembers where it is and whether it was closed."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.closed = False

    def close(self) -> None:
        self.closed = True


def lazy(made: list[str]) -> LazyEngine:
    def local() -> Any:
        made.append("local")
        return Stand("local")

    def remote(target: EngineTarget, what: str) -> Any:
        made.append(target.host)
        return Stand(target.host)

    return LazyEngine(local, remote)


def app(**engines: Any) -> AppConfig:
    build = engines.pop("build", None)
    return AppConfig(name="shop", source=Path("/srv/shop"), engines=engines, build_engine=build)


def test_a_staging_edge_never_connects_to_prods_host() -> None:
    made: list[str] = []
    engines = lazy(made)
    engines.connect_for(app(prod=PROD), ["staging"])
    assert made == ["local"]
    engines.connect_for(app(prod=PROD), ["staging", "prod"])
    assert made == ["local", "deploy@prod:22"]  # each engine connected once


def test_each_environment_gets_its_own_engine_and_the_build_its_own() -> None:
    made: list[str] = []
    shop = app(prod=PROD, build=BUILDER)
    per_app = lazy(made).for_app(shop)
    assert per_app.of("prod").where == "deploy@prod:22"
    assert per_app.of("staging").where == "local"
    assert per_app.build.where == "builder"
    assert not per_app.shares_build_engine("staging") and not per_app.shares_build_engine("prod")
    assert [t.key for t in per_app.distinct()] == [BUILDER.key, LOCAL_ENGINE.key, PROD.key]


def test_one_engine_for_everything_shares_the_build_engine() -> None:
    single = AppEngines.single(app(prod=PROD), Stand("one"))  # type: ignore[arg-type]
    assert single.of("prod") is single.of("staging") is single.build


def test_close_closes_every_engine_connected() -> None:
    made: list[str] = []
    engines = lazy(made)
    shop = engines.for_app(app(prod=PROD))
    first, second = shop.of("staging"), shop.of("prod")
    assert engines.connected is first
    engines.close()
    assert first.closed and second.closed  # type: ignore[attr-defined]
    assert engines.connected is None


def test_an_unreachable_host_propagates_before_any_other_engine_is_used() -> None:
    def refuse(target: EngineTarget, what: str) -> Any:
        raise InfraUnavailable(f"the Docker engine of {what} on {target.host} is unreachable")

    engines = LazyEngine(lambda: Stand("local"), refuse)  # type: ignore[arg-type,return-value]
    with pytest.raises(InfraUnavailable) as exc:
        engines.connect_for(app(prod=PROD), ["staging", "prod"])
    assert "shop prod on deploy@prod:22" in exc.value.message


def test_a_host_found_unreachable_is_not_waited_for_twice_in_one_command() -> None:
    """Hazard: staging and prod on one host that is down, each waiting out the connect timeout (status
    asks for both). The second ask fails at once with the first answer."""
    attempts: list[str] = []

    def refuse(target: EngineTarget, what: str) -> Any:
        attempts.append(what)
        raise InfraUnavailable(f"the Docker engine of {what} on {target.host} is unreachable")

    engines = LazyEngine(lambda: Stand("local"), refuse)  # type: ignore[arg-type,return-value]
    shop = app(staging=PROD, prod=PROD)
    for env in ("staging", "prod"):
        with pytest.raises(InfraUnavailable):
            engines.for_app(shop).of(env)
    assert len(attempts) == 1


def test_missing_tls_files_are_bad_input_naming_them(tmp_path: Path) -> None:
    from orchestrator.config import TlsFiles
    from orchestrator.errors import BadInput
    from orchestrator.service.common import connect_target

    (tmp_path / "ca.pem").write_text("not a certificate")
    target = EngineTarget(
        "tcp://10.0.0.5:2376", TlsFiles(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    )
    with pytest.raises(BadInput) as exc:
        connect_target(target, "shop prod")
    assert "cert.pem" in exc.value.message and "key.pem" in exc.value.message
    assert "ca.pem" not in exc.value.message.split("missing:")[1]
