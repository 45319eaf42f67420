"""Every runtime answers the whole Runtime interface: the deploy steps call any of them without
knowing which one runs the app, so a method missing from one would only show up mid-deploy."""

from __future__ import annotations

import inspect

import pytest

from orchestrator.runtimes import Runtime
from orchestrator.runtimes.compose import ComposeRuntime
from orchestrator.runtimes.direct import DirectRuntime, ProxiedRuntime
from orchestrator.runtimes.swarm import SwarmRuntime

INTERFACE = {
    name: inspect.signature(member)
    for name, member in vars(Runtime).items()
    if callable(member) and not name.startswith("_")
}


def test_the_interface_is_not_empty() -> None:
    assert {"label", "current", "start", "stop", "repin", "override_text"} <= set(INTERFACE)


@pytest.mark.parametrize("runtime", [DirectRuntime, ComposeRuntime, ProxiedRuntime, SwarmRuntime])
def test_runtime_implements_every_method_with_the_same_parameters(runtime: type) -> None:
    for name, wanted in INTERFACE.items():
        assert hasattr(runtime, name), f"{runtime.__name__} has no {name}"
        got = inspect.signature(getattr(runtime, name))
        assert list(got.parameters) == list(wanted.parameters), f"{runtime.__name__}.{name}{got}"


def test_only_the_proxied_runtime_is_staged() -> None:
    """The deployer checks a release apart from what serves, then hands over, only where a proxy owns
    the port; the other runtimes replace in place, so they must not look staged."""
    from orchestrator.runtimes import StagedRuntime

    assert issubclass(ProxiedRuntime, StagedRuntime)
    assert not issubclass(DirectRuntime, StagedRuntime)
    assert not issubclass(ComposeRuntime, StagedRuntime)
