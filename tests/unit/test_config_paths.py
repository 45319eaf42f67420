"""Paths in orchestrator.toml that would reach outside what the config and the app own: exit 2 at load.

The orchestrator reads the Dockerfile from the commit, writes the compose override (and its history)
on every deploy, and hands compose a file whose relative paths compose resolves beside it. A path that
escapes (``../../etc/passwd``, an override on top of the user's compose file, a source of ``/``) is
refused when the config is read, naming the key, the value and what to do, before anything runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import CONFIG_FILENAME, AppConfig, check_app_paths, load_config
from orchestrator.errors import BadInput

SERVICES = 'staging_service = "web-staging"\nprod_service = "web"\n'


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """The config file's directory: <tmp>/conf (the app's source is <tmp>/shop unless a test says)."""
    path = tmp_path / "conf"
    path.mkdir()
    return path


def load(conf: Path, app_keys: str, *, source: str = "../shop") -> AppConfig:
    path = conf / CONFIG_FILENAME
    path.write_text(f'[apps.shop]\nsource = "{source}"\n{app_keys}', encoding="utf-8")
    return load_config(path, env={}).app("shop")


def refused(conf: Path, app_keys: str, *, source: str = "../shop") -> str:
    with pytest.raises(BadInput) as excinfo:
        load(conf, app_keys, source=source)
    assert excinfo.value.exit_code == 2
    message = excinfo.value.message
    assert message.startswith(str(conf / CONFIG_FILENAME)), "the message must say which file to fix"
    return message


# --------------------------------------------------------------------------------------------------
# dockerfile: relative, inside the repository


@pytest.mark.parametrize(
    "dockerfile",
    ["/etc/passwd", "../../etc/passwd", "..", "sub/../../x", "./../Dockerfile", "a/b/../../../c"],
)
def test_dockerfile_leaving_the_repository_is_refused(conf: Path, dockerfile: str) -> None:
    message = refused(conf, f"dockerfile = {dockerfile!r}\n")
    assert f"[apps.shop].dockerfile = {dockerfile!r} leaves the app's repository" in message
    assert "relative to the repository root" in message


def test_dockerfile_naming_the_repository_itself_is_refused(conf: Path) -> None:
    assert "[apps.shop].dockerfile = 'sub/..' names the repository itself" in refused(
        conf, "dockerfile = 'sub/..'\n"
    )


@pytest.mark.parametrize(
    "dockerfile", ["Dockerfile", "docker/Dockerfile.prod", "./Dockerfile", "a/../Dockerfile", "..Dockerfile"]
)
def test_dockerfile_inside_the_repository_is_kept_as_written(conf: Path, dockerfile: str) -> None:
    assert load(conf, f"dockerfile = {dockerfile!r}\n").dockerfile == dockerfile


# --------------------------------------------------------------------------------------------------
# source


@pytest.mark.parametrize("source", ["/", "../../../../../../../../../../.."])
def test_source_at_the_filesystem_root_is_refused(conf: Path, source: str) -> None:
    message = refused(conf, "", source=source)
    assert f"[apps.shop].source = {source!r} resolves to the filesystem root /" in message
    assert "point it at the app's git repository" in message


def test_source_need_not_exist_at_load_time(conf: Path) -> None:
    """History commands (runs list/show, status) must work on a machine without the app's checkout."""
    app = load(conf, "", source="../not-cloned-here")
    assert app.source == (conf.parent / "not-cloned-here").resolve()
    assert not app.source.exists()


# --------------------------------------------------------------------------------------------------
# compose_file and override_file: inside the config's directory or the app's source


def test_compose_file_inside_the_source_but_outside_the_config_directory_is_accepted(conf: Path) -> None:
    app = load(conf, f'compose_file = "../shop/deploy/docker-compose.yml"\n{SERVICES}')
    assert app.compose_file == (conf.parent / "shop" / "deploy" / "docker-compose.yml").resolve()
    assert app.override_file == app.compose_file.parent / ".deploy" / "docker-compose.override.deploy.yml"


def test_compose_file_beside_the_config_outside_the_source_is_accepted(conf: Path) -> None:
    app = load(conf, f'compose_file = "docker-compose.yml"\n{SERVICES}')
    assert app.compose_file == (conf / "docker-compose.yml").resolve()


def test_absolute_compose_file_inside_the_source_is_accepted(conf: Path) -> None:
    """What tests/integration's ComposeApp writes: absolute paths into the app's repository."""
    compose = (conf.parent / "shop" / "docker-compose.yml").resolve()
    assert load(conf, f'compose_file = "{compose.as_posix()}"\n{SERVICES}').compose_file == compose


def test_override_file_of_its_own_inside_the_config_directory_is_accepted(conf: Path) -> None:
    app = load(
        conf,
        f'compose_file = "../shop/docker-compose.yml"\noverride_file = "pins/shop.override.yml"\n{SERVICES}',
    )
    assert app.override_file == (conf / "pins" / "shop.override.yml").resolve()


@pytest.mark.parametrize("key", ["compose_file", "override_file"])
@pytest.mark.parametrize("value", ["../elsewhere/docker-compose.yml", "/etc/compose.yml", "../../x.yml"])
def test_compose_paths_outside_both_directories_are_refused(conf: Path, key: str, value: str) -> None:
    keys = {"compose_file": "docker-compose.yml", key: value}
    text = "".join(f"{k} = {v!r}\n" for k, v in keys.items()) + SERVICES
    message = refused(conf, text)
    resolved = (conf / value).resolve()
    assert f"[apps.shop].{key} = {value!r} resolves to {resolved}" in message
    assert f"outside both the config file's directory ({conf.resolve()})" in message
    assert f"the app's source ({(conf.parent / 'shop').resolve()})" in message
    assert "keep it inside one of them" in message


def test_a_symlink_out_of_the_config_directory_is_followed_and_refused(conf: Path, tmp_path: Path) -> None:
    """Resolved with symlinks followed: a link inside the directory must not smuggle a path out."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (conf / "linked").symlink_to(outside, target_is_directory=True)
    message = refused(conf, f'compose_file = "linked/docker-compose.yml"\n{SERVICES}')
    assert f"resolves to {(outside / 'docker-compose.yml').resolve()}" in message


def test_a_symlink_into_the_source_is_accepted(conf: Path, tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    shop.mkdir()
    (conf / "app").symlink_to(shop, target_is_directory=True)
    app = load(conf, f'compose_file = "app/docker-compose.yml"\n{SERVICES}')
    assert app.compose_file == (shop / "docker-compose.yml").resolve()


def test_override_file_equal_to_the_compose_file_is_refused(conf: Path) -> None:
    message = refused(conf, f'compose_file = "stack.yml"\noverride_file = "./sub/../stack.yml"\n{SERVICES}')
    assert "[apps.shop].override_file = './sub/../stack.yml' would overwrite the compose file" in message
    assert "leave override_file out" in message


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"])
def test_override_file_named_like_a_default_compose_file_beside_it_is_refused(conf: Path, name: str) -> None:
    """`docker compose` in that folder would read it as the project's compose file."""
    message = refused(conf, f'compose_file = "stack.yml"\noverride_file = "{name}"\n{SERVICES}')
    assert f"[apps.shop].override_file = {name!r} would overwrite a compose file compose reads" in message


def test_override_file_named_like_a_default_in_another_folder_is_accepted(conf: Path) -> None:
    app = load(conf, f'compose_file = "stack.yml"\noverride_file = "pins/docker-compose.yml"\n{SERVICES}')
    assert app.override_file == (conf / "pins" / "docker-compose.yml").resolve()


# --------------------------------------------------------------------------------------------------
# check_app_paths: what must exist before a run is recorded or advanced


def test_check_app_paths_accepts_an_existing_checkout(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    check_app_paths(AppConfig(name="shop", source=tmp_path / "shop"))


def test_check_app_paths_missing_source(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as excinfo:
        check_app_paths(AppConfig(name="shop", source=tmp_path / "shop"))
    assert excinfo.value.exit_code == 2
    assert excinfo.value.message == (
        f"app 'shop': source {tmp_path / 'shop'} does not exist: clone the app's repository there "
        "or fix [apps.shop].source"
    )


def test_check_app_paths_source_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "shop").write_text("not a repository\n", encoding="utf-8")
    with pytest.raises(BadInput, match=r"source .*shop is not a directory: point \[apps.shop\].source"):
        check_app_paths(AppConfig(name="shop", source=tmp_path / "shop"))


def _compose_app(root: Path) -> AppConfig:
    (root / "shop").mkdir()
    compose = root / "shop" / "docker-compose.yml"
    return AppConfig(
        name="shop",
        source=root / "shop",
        compose_file=compose,
        override_file=compose.parent / ".deploy" / "docker-compose.override.deploy.yml",
        staging_service="web-staging",
        prod_service="web",
    )


def test_check_app_paths_missing_compose_file(tmp_path: Path) -> None:
    app = _compose_app(tmp_path)
    with pytest.raises(BadInput) as excinfo:
        check_app_paths(app)
    assert excinfo.value.message == (
        f"app 'shop': compose file {app.compose_file} does not exist: commit it to the app's repository "
        "or fix [apps.shop].compose_file"
    )
    assert app.compose_file is not None
    app.compose_file.write_text("services: {}\n", encoding="utf-8")
    check_app_paths(app)


def test_check_app_paths_compose_file_that_is_a_directory(tmp_path: Path) -> None:
    app = _compose_app(tmp_path)
    assert app.compose_file is not None
    app.compose_file.mkdir()
    with pytest.raises(BadInput, match=r"is not a file: fix \[apps.shop\].compose_file"):
        check_app_paths(app)


def test_check_app_paths_on_a_loaded_config(conf: Path) -> None:
    """The path load_config resolved is the one checked (relative to the config, not the cwd)."""
    app = load(conf, f'compose_file = "../shop/docker-compose.yml"\n{SERVICES}')
    with pytest.raises(BadInput, match=r"source .* does not exist"):
        check_app_paths(app)
    (conf.parent / "shop").mkdir()
    with pytest.raises(BadInput, match=r"compose file .* does not exist"):
        check_app_paths(app)
    (conf.parent / "shop" / "docker-compose.yml").write_text("services: {}\n", encoding="utf-8")
    check_app_paths(app)
