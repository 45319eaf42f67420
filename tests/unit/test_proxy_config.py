"""The proxy's configuration (orchestrator/proxy.py) is a pure function of its spec."""

from __future__ import annotations

from orchestrator.proxy import ADMIN_DIR, ADMIN_SOCKET, LISTEN, ProxySpec, config_hash, render


def spec(**changes: object) -> ProxySpec:
    fields: dict[str, object] = {
        "name": "shop-prod-proxy",
        "network": "orch-shop",
        "backend": "tasks.shop-prod",
        "backend_port": 8000,
        "port": 8500,
        "health_path": "/health",
        "image": "haproxy:2.8",
    }
    fields.update(changes)
    return ProxySpec(**fields)  # type: ignore[arg-type]


def test_backends_are_found_by_dns_name_and_checked_on_the_apps_health_path() -> None:
    text = render(spec())
    assert "server-template app 8 tasks.shop-prod:8000" in text
    assert "option httpchk GET /health" in text
    assert "nameserver dns 127.0.0.11:53" in text
    assert f"bind :{LISTEN}" in text


def test_a_request_to_a_backend_that_goes_away_is_retried_on_another() -> None:
    text = render(spec())
    assert "retry-on all-retryable-errors" in text
    assert "option redispatch" in text


def test_the_runtime_api_is_a_unix_socket_never_a_port() -> None:
    """It can take backends out of service: only the orchestrator's user may reach it (proxy.py)."""
    text = render(spec(admin_socket=True))
    sockets = [line.strip() for line in text.splitlines() if line.strip().startswith("stats socket")]
    assert sockets == [f"stats socket {ADMIN_DIR}/{ADMIN_SOCKET} mode 600 level admin"]
    assert "ipv4@" not in text and "stats enable" not in text
    # Swarm's proxy (Swarm stops its tasks itself), and an engine elsewhere, have none.
    assert "stats socket" not in render(spec())


def test_only_the_health_check_takes_a_backend_out_of_service() -> None:
    """A request's failed connect to a backend just resolved (before its network answered) must not mark
    it down after its check passed: that left no backend up (a 503) once the old one was gone."""
    text = render(spec())
    assert "observe" not in text and "on-error" not in text
    assert "fall 2 rise 1 check" in text


def test_the_config_hash_changes_with_what_the_proxy_routes_to_and_only_then() -> None:
    assert config_hash(render(spec())) == config_hash(render(spec(image="other:1")))
    assert config_hash(render(spec())) != config_hash(render(spec(backend="shop-prod-backend")))
    assert config_hash(render(spec())) != config_hash(render(spec(health_path="/ready")))
