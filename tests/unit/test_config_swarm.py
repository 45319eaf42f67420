"""Swarm keys: a swarm environment needs a registry (it is pinned by digest), and every swarm key is
refused where it would be ignored, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import CONFIG_FILENAME, load_config
from orchestrator.errors import BadInput

APP = '[apps.shop]\nsource = "."\nregistry = "127.0.0.1:5000"\n'


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text, encoding="utf-8")
    return load_config(path, env=env or {}).app("shop")


def test_swarm_defaults(tmp_path: Path) -> None:
    app = load(tmp_path, APP + 'runtime = "swarm"\n')
    assert app.runtime_of("staging") == app.runtime_of("prod") == "swarm"
    assert app.swarm_environments == {"staging", "prod"}
    assert (app.replicas, app.network, app.update_monitor_s, app.task_port) == (2, "orch-shop", 5.0, 8080)


def test_swarm_for_prod_only_and_its_keys(tmp_path: Path) -> None:
    text = APP + 'runtime = { prod = "swarm" }\nreplicas = 3\nswarm_network = "shop-net"\n'
    app = load(tmp_path, text + "update_monitor_s = 1.5\ncontainer_port = 9000\n")
    assert (app.runtime_of("staging"), app.runtime_of("prod")) == ("direct", "swarm")
    assert app.swarm_environments == {"prod"}
    assert (app.replicas, app.network, app.update_monitor_s, app.task_port) == (3, "shop-net", 1.5, 9000)


def test_swarm_publish_is_the_proxy_unless_ingress_is_named(tmp_path: Path) -> None:
    """The proxy by default (the mesh does not answer everywhere); "ingress" for every swarm environment,
    or a table for some of them."""
    app = load(tmp_path, APP + 'runtime = "swarm"\n')
    assert app.publish_of("staging") == app.publish_of("prod") == "proxy"
    app = load(tmp_path, APP + 'runtime = "swarm"\nswarm_publish = "ingress"\n')
    assert app.publish_of("staging") == app.publish_of("prod") == "ingress"
    app = load(tmp_path, APP + 'runtime = "swarm"\nswarm_publish = { prod = "ingress" }\n')
    assert (app.publish_of("staging"), app.publish_of("prod")) == ("proxy", "ingress")
    app = load(tmp_path, APP + 'runtime = { prod = "swarm" }\nswarm_publish = "ingress"\n')
    assert (app.publish_of("staging"), app.publish_of("prod")) == ("proxy", "ingress")


def test_a_direct_app_keeps_its_default(tmp_path: Path) -> None:
    app = load(tmp_path, APP)
    assert app.runtime_of("prod") == "direct" and not app.swarm_environments


def test_the_registry_may_come_from_the_environment(tmp_path: Path) -> None:
    app = load(
        tmp_path, '[apps.shop]\nsource = "."\nruntime = "swarm"\n', {"ORCH_REGISTRY": "127.0.0.1:5000"}
    )
    assert app.swarm_environments == {"staging", "prod"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[apps.shop]\nsource = "."\nruntime = "swarm"\n', "needs a registry"),
        (APP + 'runtime = "kubernetes"\n', "is not one of direct, swarm"),
        (APP + 'runtime = { production = "swarm" }\n', "a table per environment"),
        (APP + "runtime = 3\n", "a table per environment"),
        (APP + "replicas = 2\n", "only applies to swarm environments"),
        (APP + 'runtime = "swarm"\nreplicas = 0\n', "whole number >= 1"),
        (APP + 'runtime = "swarm"\nupdate_monitor_s = -1\n', "must be a number >= 0"),
        (APP + 'runtime = "swarm"\nswarm_network = "bad name"\n', "must be a Docker network name"),
        (
            APP + 'runtime = "swarm"\ncompose_file = "c.yml"\nstaging_service = "a"\nprod_service = "b"\n',
            "cannot be combined",
        ),
        (APP + 'swarm_publish = "ingress"\n', "only applies to swarm environments"),
        (APP + 'runtime = "swarm"\nswarm_publish = "mesh"\n', "'mesh' is not one of proxy, ingress"),
        (APP + 'runtime = "swarm"\nswarm_publish = { production = "ingress" }\n', "a table per environment"),
        (
            APP + 'runtime = { prod = "swarm" }\nswarm_publish = { staging = "ingress" }\n',
            "names staging, which does not run on swarm",
        ),
        (
            APP
            + 'runtime = "swarm"\nswarm_publish = "ingress"\nstack_file = "s.yml"\nstack_service = "web"\n',
            "cannot be combined with stack_file",
        ),
    ],
)
def test_bad_swarm_keys_are_bad_input(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(BadInput) as exc:
        load(tmp_path, text)
    assert fragment in exc.value.message


def test_the_swarm_timeout_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILENAME
    path.write_text(APP, encoding="utf-8")
    assert load_config(path, env={"ORCH_SWARM_TIMEOUT_S": "42"}).settings.swarm_timeout_s == 42


class _NotAManager:
    """An engine that answers but is not a swarm manager (a plain engine, or a worker node)."""

    class swarm:  # mirrors DockerEngine.swarm
        @staticmethod
        def manager() -> bool:
            return False


def test_an_engine_that_is_not_a_swarm_manager_is_exit_4_saying_swarm_init(tmp_path: Path) -> None:
    from orchestrator.engines import AppEngines
    from orchestrator.errors import InfraUnavailable
    from orchestrator.runtimes import engine_preflight

    app = load(tmp_path, APP + 'runtime = { prod = "swarm" }\n')
    engines = AppEngines.single(app, _NotAManager())  # type: ignore[arg-type]
    engine_preflight(engines, app, ["staging"])  # staging is a container
    with pytest.raises(InfraUnavailable) as exc:
        engine_preflight(engines, app, ["staging", "prod"])
    assert "docker swarm init --advertise-addr 127.0.0.1" in exc.value.message


def test_a_remote_engine_that_is_not_a_manager_is_not_told_to_advertise_loopback(tmp_path: Path) -> None:
    """Hazard: following the local advice on another host makes a swarm no second node can join."""
    from orchestrator.engines import AppEngines
    from orchestrator.errors import InfraUnavailable
    from orchestrator.runtimes import engine_preflight

    app = load(tmp_path, APP + 'runtime = "swarm"\n', {"ORCH_DOCKER_HOST_PROD": "ssh://deploy@prod.example"})
    engines = AppEngines.single(app, _NotAManager())  # type: ignore[arg-type]
    with pytest.raises(InfraUnavailable) as exc:
        engine_preflight(engines, app, ["prod"])
    assert "at deploy@prod.example is not a swarm manager" in exc.value.message
    assert "127.0.0.1" not in exc.value.message and "docker_host at a manager" in exc.value.message


def test_swarm_on_a_remote_manager_over_ssh_loads(tmp_path: Path) -> None:
    """Issue 14: prod on another host's swarm manager; health checks go to that host's address."""
    app = load(tmp_path, APP + 'runtime = "swarm"\ndocker_host = "ssh://deploy@prod.example:22"\n')
    assert app.swarm_environments == {"staging", "prod"}
    prod = app.engine("prod")
    assert (prod.url, prod.address, prod.is_local) == ("ssh://deploy@prod.example:22", "prod.example", False)


def test_swarm_on_a_remote_manager_over_tcp_with_tls_and_a_build_host_loads(tmp_path: Path) -> None:
    text = (
        APP + 'runtime = { prod = "swarm" }\nbuild_host = "ssh://build@ci.example"\n'
        '[apps.shop.prod]\ndocker_host = "tcp://10.0.0.5:2376"\ntls_ca = "ca.pem"\n'
        'tls_cert = "cert.pem"\ntls_key = "key.pem"\nhealth_host = "203.0.113.7"\n'
    )
    app = load(tmp_path, text)
    assert (app.runtime_of("staging"), app.runtime_of("prod")) == ("direct", "swarm")
    assert app.engine("prod").tls is not None and app.engine("prod").address == "203.0.113.7"
    assert app.builds_on.url == "ssh://build@ci.example"


def test_swarm_on_a_remote_manager_from_the_environment_variable(tmp_path: Path) -> None:
    app = load(tmp_path, APP + 'runtime = "swarm"\n', {"ORCH_DOCKER_HOST_PROD": "ssh://deploy@prod.example"})
    assert app.engine("prod").url == "ssh://deploy@prod.example" and app.engine("staging").is_local


def test_a_stack_app_pins_its_service_through_an_override_beside_the_stack_file(tmp_path: Path) -> None:
    text = APP + 'runtime = { prod = "swarm" }\nstack_file = "deploy/stack.yml"\nstack_service = "web"\n'
    app = load(tmp_path, text)
    assert app.stack_file == (tmp_path / "deploy" / "stack.yml").resolve()
    assert app.stack_service == "web" and not app.is_compose
    assert app.override_file == (tmp_path / "deploy" / ".deploy" / "stack.override.deploy.yml").resolve()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('stack_file = "stack.yml"\n', "stack_service must name"),
        ('stack_service = "web"\n', "stack_file must be a path"),
        ('stack_file = "../elsewhere/stack.yml"\nstack_service = "web"\n', "outside both"),
    ],
)
def test_bad_stack_keys_are_bad_input(tmp_path: Path, extra: str, fragment: str) -> None:
    (tmp_path / "app").mkdir()
    with pytest.raises(BadInput) as exc:
        load(tmp_path / "app", APP + 'runtime = "swarm"\n' + extra)
    assert fragment in exc.value.message


def test_stack_keys_need_swarm(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as exc:
        load(tmp_path, APP + 'stack_file = "stack.yml"\nstack_service = "web"\n')
    assert "only applies to swarm environments" in exc.value.message


def test_the_stack_service_must_be_in_the_stack_file(tmp_path: Path) -> None:
    """An override naming a service the stack lacks would make `docker stack deploy` create one."""
    from orchestrator.stack import check_service

    stack = tmp_path / "stack.yml"
    stack.write_text('version: "3.8"\nservices:\n  web:\n    image: shop:latest\n  "db":\n    image: pg\n')
    check_service(stack, "web")
    check_service(stack, "db")
    with pytest.raises(BadInput) as exc:
        check_service(stack, "webb")
    assert "has no service 'webb'" in exc.value.message


def test_the_stack_override_names_only_the_app_service_by_digest() -> None:
    from orchestrator.stack import StackPin, render_override

    digest = "reg:5000/shop@sha256:" + "a" * 64
    text = render_override(
        StackPin("web", digest, "orch-shop", 1.5, {"orchestrator.run": "7"}, {"orchestrator.revision": "abc"})
    )
    assert text.count("image:") == 1 and f'image: "{digest}"' in text
    assert "order: start-first, failure_action: rollback, monitor: 1500ms" in text
    assert '"orchestrator.revision": "abc"' in text and '"orchestrator.run": "7"' in text
    assert 'name: "orch-shop"' in text and "external: true" in text


def test_a_swarm_app_names_its_proxy_image_and_cannot_also_be_zero_downtime(tmp_path: Path) -> None:
    app = load(tmp_path, APP + 'runtime = "swarm"\nproxy_image = "reg:5000/haproxy:2.8"\n')
    assert app.proxy_image == "reg:5000/haproxy:2.8"
    with pytest.raises(BadInput) as exc:
        load(tmp_path, APP + 'runtime = "swarm"\nzero_downtime = true\ncontainer_port = 8080\n')
    assert "behind their own proxy already" in exc.value.message


def test_stack_deploy_reaches_the_environments_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: `docker stack deploy` run with this process's DOCKER_HOST while the environment's manager
    is another host: the stack would be deployed on the wrong engine. The CLI gets the engine's own
    flags (DockerEngine.cli_args: the shared ssh connection's socket, or tcp:// and its TLS files).
    Only the argv is checked here, with a stand-in `docker` that records it."""
    from orchestrator.stack import Stack

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "argv"
    fake = bin_dir / "docker"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\n', encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    stack_file = tmp_path / "stack.yml"
    stack_file.write_text('version: "3.8"\nservices:\n  web:\n    image: shop\n', encoding="utf-8")
    flags = ("--host", "tcp://10.0.0.5:2376", "--tlsverify", "--tlscacert", "ca.pem")
    Stack(stack_file, tmp_path / "o.yml", "shop", cli_args=flags).deploy()
    argv = seen.read_text().splitlines()
    assert argv[: len(flags) + 2] == [*flags, "stack", "deploy"], argv
