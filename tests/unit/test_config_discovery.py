"""Where the config and the history live: discovery, the default database beside the config, upgrades.

The history belongs to the config file, not to the directory a command happens to run in: run from a
subfolder, or with ``--config ../deploy/orchestrator.toml`` from anywhere, it must be the same history
(same releases to roll back to, same locks). An upgrading user's history in the old default place
(``./.orchestrator/`` of the current directory) is never silently left behind, and what orchestrator
writes into an app repository keeps the repository's ``git status`` clean.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.config import CONFIG_FILENAME, DEFAULT_DB_PATH, load_config
from orchestrator.errors import BadInput
from orchestrator.store import db
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Cli, GitRepo, Workspace


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def write_config(folder: Path, app: str = "shop", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILENAME
    path.write_text(f'{extra}[apps.{app}]\nsource = "."\n', encoding="utf-8")
    return path


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """A deployment folder with its orchestrator.toml (app ``shop``), and an unrelated ``elsewhere``."""
    write_config(tmp_path / "deploy")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "deploy"


# --------------------------------------------------------------------------------------------------
# discovery: --config, ORCH_CONFIG, then the current directory or its parents


def test_config_in_a_parent_directory_is_found_with_its_history(
    deploy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: a command run from a subfolder of the deployment saw no config (unknown app) and started a
    second, empty history in that subfolder."""
    sub = deploy / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    cfg = load_config(env={})
    assert cfg.path == (deploy / CONFIG_FILENAME).resolve()
    assert set(cfg.apps) == {"shop"}
    assert cfg.config_source == "found in a parent of the current directory"
    assert cfg.settings.database_url == sqlite_url(deploy.resolve() / DEFAULT_DB_PATH)
    assert cfg.database_source == "default: beside the config file"


def test_the_nearest_config_wins(deploy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = write_config(deploy / "inner", app="blog")
    monkeypatch.chdir(inner.parent)
    cfg = load_config(env={})
    assert (cfg.path, set(cfg.apps), cfg.config_source) == (
        inner.resolve(),
        {"blog"},
        "found in the current directory",
    )


def test_orch_config_and_then_the_argument_win_over_discovery(
    deploy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(deploy)
    via_env = write_config(tmp_path / "env", app="fromenv")
    via_arg = write_config(tmp_path / "arg", app="fromarg")
    from_env = load_config(env={"ORCH_CONFIG": str(via_env)})
    assert (set(from_env.apps), from_env.config_source) == ({"fromenv"}, "ORCH_CONFIG")
    from_arg = load_config(via_arg, env={"ORCH_CONFIG": str(via_env)})
    assert (set(from_arg.apps), from_arg.config_source) == ({"fromarg"}, "--config")
    assert from_arg.settings.database_url == sqlite_url(via_arg.parent.resolve() / DEFAULT_DB_PATH)


def test_no_config_anywhere_keeps_the_history_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert (cfg.path, cfg.config_source) == (None, "none found")
    assert cfg.settings.database_url == sqlite_url(tmp_path / DEFAULT_DB_PATH)
    with pytest.raises(BadInput, match="or its parent directories"):
        cfg.app("shop")


def test_a_parent_config_owned_by_another_user_is_not_used(
    deploy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: in a shared folder (/tmp) another user plants orchestrator.toml one level up, and our next
    command builds and runs their app. Found by walking up, it must be ours (or root's); named
    explicitly it is used."""
    sub = deploy / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    if os.getuid() == 0:
        os.chown(deploy / CONFIG_FILENAME, 4242, 4242)
    else:
        me = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: me + 4242)
    with pytest.raises(BadInput) as excinfo:
        load_config(env={})
    message = excinfo.value.message
    assert "belongs to another user" in message and f"--config {deploy / CONFIG_FILENAME}" in message
    assert set(load_config(deploy / CONFIG_FILENAME, env={}).apps) == {"shop"}


# --------------------------------------------------------------------------------------------------
# the database beside the config


def test_default_database_is_beside_the_config_whatever_the_current_directory(
    deploy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard (issue 11): ``--config ../deploy/orchestrator.toml`` from another directory showed an empty
    history and would have started a second one there."""
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(Path("..") / "deploy" / CONFIG_FILENAME, env={})
    assert cfg.settings.database_url == sqlite_url(deploy.resolve() / DEFAULT_DB_PATH)
    monkeypatch.chdir(deploy)
    assert load_config(env={}).settings.database_url == cfg.settings.database_url


def test_orch_database_url_still_wins(deploy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(deploy)
    url = sqlite_url(tmp_path / "elsewhere" / "history.db")
    cfg = load_config(env={"ORCH_DATABASE_URL": url})
    assert (cfg.settings.database_url, cfg.database_source) == (url, "ORCH_DATABASE_URL")


def test_a_relative_sqlite_path_in_the_config_is_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like ``source``: a path written in the file means the same from every working directory."""
    path = write_config(
        tmp_path / "deploy", extra='[orchestrator]\ndatabase_url = "sqlite:///state/orch.db?timeout=5"\n'
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, env={})
    assert cfg.settings.database_url == sqlite_url(path.parent.resolve() / "state" / "orch.db") + "?timeout=5"
    assert cfg.database_source == f"[orchestrator].database_url in {path}"


# --------------------------------------------------------------------------------------------------
# upgrading from the old default (./.orchestrator/ of the current directory)


def make_history(path: Path) -> int:
    """A real, migrated SQLite history at ``path`` holding one run; returns its id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(sqlite_url(path))
    try:
        return store.create_run("shop", "a" * 40, "ops", "development").id
    finally:
        store.close()


def test_history_in_the_old_default_place_is_refused_with_the_command_that_moves_it(
    deploy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: upgrading silently starts an empty history beside the config while the real one (releases
    to roll back to, locks) sits in ./.orchestrator/ of the directory the operator used to run from.
    Refused (exit 2) until moved; the command the message gives moves it, history intact."""
    elsewhere = tmp_path / "elsewhere"
    run_id = make_history(elsewhere / DEFAULT_DB_PATH)
    monkeypatch.chdir(elsewhere)
    with pytest.raises(BadInput) as excinfo:
        load_config(deploy / CONFIG_FILENAME, env={})
    message = excinfo.value.message
    assert excinfo.value.exit_code == 2
    assert f"run history found at {elsewhere / DEFAULT_DB_PATH}" in message, message
    assert str(deploy.resolve() / DEFAULT_DB_PATH) in message, message
    assert f"ORCH_DATABASE_URL={sqlite_url(elsewhere / DEFAULT_DB_PATH)}" in message, message
    assert not (deploy / ".orchestrator").exists(), "nothing was created beside the config"

    (move,) = re.findall(r"'(mkdir -p -m 700 .*?)' \(the \*", message)
    subprocess.run(["sh", "-c", move], check=True)

    cfg = load_config(deploy / CONFIG_FILENAME, env={})
    assert cfg.warnings == ()
    store = Store(cfg.settings.database_url)
    try:
        assert [r.id for r in store.list_runs()] == [run_id], "the moved history is the one in use"
    finally:
        store.close()
    assert (deploy / ".orchestrator").stat().st_mode & 0o777 == 0o700


def test_old_default_beside_an_existing_new_one_is_named_in_a_warning(
    deploy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    make_history(elsewhere / DEFAULT_DB_PATH)
    make_history(deploy / DEFAULT_DB_PATH)
    monkeypatch.chdir(elsewhere)
    (warning,) = load_config(deploy / CONFIG_FILENAME, env={}).warnings
    assert f"{elsewhere / DEFAULT_DB_PATH} (the default database of earlier versions" in warning
    assert f"the history of {deploy / CONFIG_FILENAME} is {deploy.resolve() / DEFAULT_DB_PATH}" in warning


def test_old_and_new_default_in_the_same_place_is_no_upgrade(
    deploy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_history(deploy / DEFAULT_DB_PATH)
    monkeypatch.chdir(deploy)
    assert load_config(env={}).warnings == ()


# --------------------------------------------------------------------------------------------------
# through the CLI: one history from every directory, and --verbose says which


@pytest.fixture
def default_db(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The workspace without ORCH_DATABASE_URL: its history is the default one beside its config."""
    monkeypatch.delenv("ORCH_DATABASE_URL")
    return workspace.path / DEFAULT_DB_PATH


def test_the_same_history_from_the_config_dir_a_subdir_and_elsewhere(
    cli: Cli, workspace: Workspace, default_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]
    assert default_db.is_file()
    sub = workspace.path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert [r["run_id"] for r in cli("runs", "list", as_json=True).ok()["runs"]] == [run_id]
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    listed = cli("--config", str(workspace.config_path), "runs", "list", as_json=True).ok()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    assert not (sub / ".orchestrator").exists() and not (other / ".orchestrator").exists()


def test_verbose_names_the_config_and_the_database_and_how_each_was_chosen(
    cli: Cli, workspace: Workspace, default_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = workspace.path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    result = cli("--verbose", "runs", "list", as_json=True)
    result.ok()
    config_path = workspace.config_path.resolve()
    assert f"config: {config_path} (found in a parent of the current directory)" in result.stderr
    assert f"database: {sqlite_url(default_db.resolve())} (default: beside the config file)" in result.stderr
    assert "config:" not in cli("runs", "list", as_json=True).stderr, "only with --verbose"

    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql+psycopg://orch:s3cret@127.0.0.1:1/orch")
    masked = cli("-v", "runs", "list", as_json=True)
    assert "database: postgresql+psycopg://orch:***@127.0.0.1:1/orch (ORCH_DATABASE_URL)" in masked.stderr
    assert "s3cret" not in masked.stderr + masked.stdout


# --------------------------------------------------------------------------------------------------
# the app repository's working tree stays clean


def git_status(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture
def config_in_repo(git_repo: Callable[..., GitRepo], monkeypatch: pytest.MonkeyPatch) -> tuple[GitRepo, Path]:
    """orchestrator.toml committed at the root of the app's own repository (``source = "."``)."""
    repo = git_repo("shop")
    repo.commit("deploy config", {CONFIG_FILENAME: '[apps.shop]\nsource = "."\n'})
    monkeypatch.chdir(repo.path)
    return repo, repo.path / DEFAULT_DB_PATH


def test_the_history_inside_an_app_repository_ignores_itself_in_git(
    cli: Cli, config_in_repo: tuple[GitRepo, Path]
) -> None:
    repo, database = config_in_repo
    assert git_status(repo.path) == ""
    cli("runs", "list", as_json=True).ok()
    assert database.is_file()
    assert (database.parent / ".gitignore").read_text(encoding="utf-8") == db.SELF_IGNORE
    assert git_status(repo.path) == "", "the history must not show up in the app's git status"


def test_a_folder_left_by_an_earlier_version_is_recognised_by_holding_only_the_database(
    cli: Cli, config_in_repo: tuple[GitRepo, Path]
) -> None:
    repo, database = config_in_repo
    database.parent.mkdir(mode=0o700)
    sqlite3.connect(database).close()  # what an earlier version left: the folder and the file, no more
    assert git_status(repo.path) == "?? .orchestrator/orchestrator.db\n"
    cli("runs", "list", as_json=True).ok()
    assert git_status(repo.path) == ""


def test_a_folder_holding_anything_else_gets_no_gitignore(
    cli: Cli, config_in_repo: tuple[GitRepo, Path]
) -> None:
    """Issue 10's rule: a ``*`` in a folder orchestrator did not create would hide someone's work."""
    repo, database = config_in_repo
    database.parent.mkdir()
    (database.parent / "notes.md").write_text("mine\n", encoding="utf-8")
    cli("runs", "list", as_json=True).ok()
    assert database.is_file()
    assert not (database.parent / ".gitignore").exists()
    assert ".orchestrator/notes.md" in git_status(repo.path)
