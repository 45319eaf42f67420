"""A haproxy container in front of one environment, so its port keeps answering while what serves it
changes (zero-downtime promotion and rollback).

Why this shape: on one node Swarm's ingress routing mesh is not always there (it needs IPVS), and two
replicas cannot both publish one host port, so a start-first update cannot hand a port over by itself;
a direct container swap has the same gap. The proxy owns the environment's port; the backends (swarm
tasks, or plain containers sharing a network alias) join a Docker network, and haproxy finds them
through Docker's embedded DNS (127.0.0.11) by one stable name. Its configuration therefore never
changes during a promotion: a new backend appears in DNS, passes haproxy's own health check and takes
traffic; an old one leaves DNS and a request that hits it while it stops is retried on another
backend (``retry-on`` + ``redispatch``). No reload, so nothing to get half-done.

Where a cluster has a working routing mesh, services can publish through it instead and need no proxy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from orchestrator.docker_engine import ContainerInfo, DockerEngine

# Where the configuration goes inside the container: the official haproxy image's default path.
CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
# The port haproxy listens on inside its container (published on 127.0.0.1:<env port>).
LISTEN = 8080
CONFIG_LABEL = "orchestrator.proxy.config"
# A request carrying PROBE_HEADER gets BACKEND_HEADER back: the address of the backend that answered.
# That is how a hand-over knows the proxy sends traffic to a new backend before the old one leaves;
# ordinary clients never see backend addresses.
PROBE_HEADER = "X-Orch-Probe"
BACKEND_HEADER = "X-Orch-Backend"
ROLE_LABEL = "orchestrator.role"


@dataclass(frozen=True)
class ProxySpec:
    """One environment's proxy: where it listens, and the DNS name its backends answer to."""

    name: str  # the proxy container, e.g. "shop-prod-proxy"
    network: str  # the Docker network the backends and the proxy share
    backend: str  # DNS name of the backends: "tasks.<service>" (swarm) or a network alias (containers)
    backend_port: int  # the port the app listens on inside its container
    port: int  # the environment's port on 127.0.0.1
    health_path: str  # haproxy's own check, so a backend takes traffic only once it answers
    image: str
    # Upper bound of backends resolved at once (replicas, plus the new ones of a start-first update).
    slots: int = 8
    # haproxy's check interval: how soon a new backend takes traffic and a dead one stops getting it.
    check_ms: int = 200


def render(spec: ProxySpec) -> str:
    """The haproxy configuration for ``spec``; a pure function, so its tests need no engine."""
    return "\n".join(
        [
            "global",
            # Server state changes reach `docker logs`; requests themselves are not logged.
            "  log stdout format raw local0 notice",
            "defaults",
            "  mode http",
            "  log global",
            # A backend that left the network (disconnected, its container gone) does not refuse a
            # connection: nothing answers at all. A short connect timeout bounds what the request that
            # hits it waits before its retry on another backend (a local or overlay connect takes
            # milliseconds), and a health check slower than the interval on a busy host must not mark
            # the only backend down (503 for everyone).
            "  timeout connect 300ms",
            "  timeout check 2s",
            "  timeout client 60s",
            "  timeout server 60s",
            # A request whose backend refused, reset or vanished is retried on another backend: this is
            # what makes removing an old backend invisible to clients.
            "  retries 3",
            "  option redispatch 1",
            "  retry-on all-retryable-errors",
            "resolvers docker",
            "  nameserver dns 127.0.0.11:53",
            "  accepted_payload_size 8192",
            "  hold valid 1s",
            "  hold obsolete 0s",
            "  timeout resolve 200ms",
            "  timeout retry 200ms",
            "frontend app",
            f"  bind :{LISTEN}",
            "  default_backend app",
            "backend app",
            f"  http-request set-var(txn.orch_probe) bool(true) if {{ req.hdr({PROBE_HEADER}) -m found }}",
            f"  http-response set-header {BACKEND_HEADER} %si if {{ var(txn.orch_probe) -m bool }}",
            f"  option httpchk GET {spec.health_path}",
            # observe: the first failed connection marks the backend down at once, so only one request
            # pays the connect timeout for a backend that has gone.
            f"  default-server inter {spec.check_ms}ms fall 2 rise 1 check resolvers docker init-addr none"
            " observe layer4 error-limit 1 on-error mark-down",
            f"  server-template app {spec.slots} {spec.backend}:{spec.backend_port}",
            "",
        ]
    )


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Proxy:
    """Keeps one environment's proxy container running with ``spec``'s configuration."""

    def __init__(self, engine: DockerEngine, spec: ProxySpec, *, overlay: bool = False) -> None:
        self.engine = engine
        self.spec = spec
        # Swarm services need a swarm-scoped (overlay) network; plain containers share a bridge.
        self.driver = "overlay" if overlay else "bridge"

    def ensure(self) -> ContainerInfo:
        """The proxy runs with this configuration: kept when it already does (the usual case, so a
        promotion never touches it), otherwise (re)created. Recreating drops the port for as long as
        haproxy takes to start; it happens only when the configuration itself changed."""
        text = render(self.spec)
        want = config_hash(text)
        self.engine.ensure_network(self.spec.network, driver=self.driver, labels={ROLE_LABEL: "app-network"})
        current = self.engine.container(self.spec.name)
        if current is not None and current.running and current.labels.get(CONFIG_LABEL) == want:
            return current
        if current is not None:
            self.engine.remove_container(self.spec.name)
        return self.engine.run(
            self.spec.name,
            self.spec.image,
            # -W: master-worker, so SIGTERM from `docker stop` ends it cleanly; -db: stay in the foreground.
            command=["-W", "-db", "-f", CONFIG_PATH],
            host_network=False,
            network=self.spec.network,
            publish={LISTEN: ("127.0.0.1", self.spec.port)},
            labels={CONFIG_LABEL: want, ROLE_LABEL: "proxy"},
            restart=True,
            files={CONFIG_PATH: text.encode()},
        )

    def remove(self) -> bool:
        """Take the proxy down (the environment stops answering); True when something was removed."""
        return self.engine.remove_container(self.spec.name)
