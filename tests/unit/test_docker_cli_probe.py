"""The docker CLI probe's answer, kept across processes (builders._ProbeCache).

Finding a BuildKit-capable CLI runs every candidate CLI (``buildx version``, ``--version``): 30-90 ms of
subprocesses before each process can send its staging build (issue 12). The answer is kept under the
fingerprint of the CLIs and plugin folders; these tests use small shell scripts as the candidate CLIs
(this is about when the probe runs, not about Docker), each logging every time it is run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import builders


def _fake_cli(folder: Path, version: str) -> Path:
    """A CLI of ``version`` that has buildx when its plugin is in $DOCKER_CONFIG/cli-plugins, as the
    real one does."""
    folder.mkdir(parents=True, exist_ok=True)
    cli = folder / "docker"
    log = folder / "runs.log"
    cli.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'if [ "$1" = buildx ]; then\n'
        '  [ -e "$DOCKER_CONFIG/cli-plugins/docker-buildx" ] && { echo "buildx v0.11"; exit 0; }\n'
        "  exit 1\n"
        "fi\n"
        f'echo "Docker version {version}, build abc"\n'
    )
    cli.chmod(0o755)
    return cli


def _runs(cli: Path) -> int:
    log = cli.parent / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def probe_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory and docker config, and the in-process memo cleared before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    builders._find.cache_clear()
    yield tmp_path
    builders._find.cache_clear()


def _find_afresh(cli: Path) -> builders.BuildKitCli | None:
    """What a new process finds (the in-process memo is per process)."""
    builders._find.cache_clear()
    return builders.find_buildkit_cli(str(cli))


def test_a_second_process_takes_the_kept_answer_without_running_the_cli(probe_env: Path) -> None:
    cli = _fake_cli(probe_env / "bin", "20.10.24")
    assert _find_afresh(cli) == builders.BuildKitCli(str(cli), buildx=False)
    ran = _runs(cli)
    assert ran == 2  # buildx version, then --version
    assert _find_afresh(cli) == builders.BuildKitCli(str(cli), buildx=False)
    assert _runs(cli) == ran


def test_a_cli_that_changed_is_asked_again(probe_env: Path) -> None:
    cli = _fake_cli(probe_env / "bin", "20.10.24")
    assert _find_afresh(cli) is not None
    _fake_cli(probe_env / "bin", "24.0.7")  # upgraded in place: 24.0 builds with BuildKit only via buildx
    stat = cli.stat()
    os.utime(cli, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _find_afresh(cli) is None


def test_a_buildx_plugin_installed_since_is_found(probe_env: Path) -> None:
    cli = _fake_cli(probe_env / "bin", "20.10.24")
    assert _find_afresh(cli) == builders.BuildKitCli(str(cli), buildx=False)
    plugins = probe_env / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    assert _find_afresh(cli) == builders.BuildKitCli(str(cli), buildx=False)  # an empty plugin folder
    time.sleep(0.01)
    (plugins / "docker-buildx").write_text("")  # the CLI is the same; its plugin folder changed
    assert _find_afresh(cli) == builders.BuildKitCli(str(cli), buildx=True)


def test_no_buildkit_cli_is_kept_too_and_a_broken_cache_is_only_slower(probe_env: Path) -> None:
    cli = _fake_cli(probe_env / "bin", "17.06.0")
    assert _find_afresh(cli) is None
    ran = _runs(cli)
    assert _find_afresh(cli) is None and _runs(cli) == ran
    cache = Path(builders._ProbeCache().path)
    cache.write_text("{not json")
    assert _find_afresh(cli) is None and _runs(cli) > ran


def test_a_kept_path_that_is_no_candidate_now_is_not_used(probe_env: Path) -> None:
    cli = _fake_cli(probe_env / "bin", "20.10.24")
    assert _find_afresh(cli) is not None
    cache = builders._ProbeCache()
    key = next(iter(cache._read()))
    cache.put(key, builders.BuildKitCli("/somewhere/else/docker", buildx=True))
    assert _find_afresh(cli) == builders.BuildKitCli(str(cli), buildx=False)
