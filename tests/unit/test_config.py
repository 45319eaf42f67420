"""orchestrator.toml + ORCH_* parsing: every value checked, every unknown name an error (exit 2).

A deploy tool that reads a typo as "off" is worse than one that refuses to start, so most tests here
assert that a mistake is rejected *and* that the message names the offending key or variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from orchestrator.config import (
    CONFIG_FILENAME,
    DEFAULT_DB_PATH,
    ENV_VARS,
    AppConfig,
    Config,
    Settings,
    load_config,
    parse_bool,
)
from orchestrator.errors import BadInput

WriteConfig = Callable[[str], Path]


# A second app must not share the first one's (default) ports.
OTHER_PORTS = "\nstaging_port = 9101\nprod_port = 9100\n"


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "conf" / CONFIG_FILENAME
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def bad(path: Path | None, env: Mapping[str, str] | None = None) -> str:
    """Load expecting BadInput; return its message."""
    with pytest.raises(BadInput) as excinfo:
        load_config(path, env={} if env is None else env)
    assert excinfo.value.exit_code == 2
    return excinfo.value.message


# --------------------------------------------------------------------------------------------------
# defaults and discovery


def test_defaults_for_a_minimal_app(write_config: WriteConfig, tmp_path: Path) -> None:
    cfg = load_config(write_config('[apps.shop]\nsource = "/srv/shop"\n'), env={})
    app = cfg.app("shop")
    assert app == AppConfig(name="shop", source=Path("/srv/shop"))
    assert (app.dockerfile, app.health_path, app.staging_port, app.prod_port) == (
        "Dockerfile",
        "/health",
        8501,
        8500,
    )
    assert app.container_port is None and app.version_path is None
    s = cfg.settings
    assert (s.log_format, s.log_level) == ("auto", "info")
    assert s.image_freshness_enabled is True and s.image_freshness_repos == frozenset()
    assert (s.health_timeout_s, s.health_interval_s, s.drain_s) == (30.0, 0.05, 5.0)
    assert cfg.path == (tmp_path / "conf" / CONFIG_FILENAME).resolve()


def test_without_a_config_the_default_database_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.settings.database_url == f"sqlite:///{(tmp_path / DEFAULT_DB_PATH).as_posix()}"


def test_missing_default_file_is_fine_but_unknown_app_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History commands work without a config; asking for an app without one must say why it failed."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.path is None and dict(cfg.apps) == {}
    with pytest.raises(BadInput) as excinfo:
        cfg.app("shop")
    assert f"no {CONFIG_FILENAME} in {tmp_path}" in excinfo.value.message
    assert "--config" in excinfo.value.message


def test_unknown_app_lists_the_known_ones(write_config: WriteConfig) -> None:
    cfg = load_config(
        write_config(f'[apps.shop]\nsource = "."\n[apps.blog]\nsource = "."{OTHER_PORTS}'), env={}
    )
    with pytest.raises(BadInput, match=r"unknown app 'shp' in .* \(known apps: blog, shop\)"):
        cfg.app("shp")


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert f"config file {missing} does not exist" in bad(missing)
    assert "does not exist" in bad(None, env={"ORCH_CONFIG": str(missing)})


def test_orch_config_names_the_file_and_argument_wins(write_config: WriteConfig, tmp_path: Path) -> None:
    via_env = write_config('[apps.fromenv]\nsource = "."\n')
    other = tmp_path / "other.toml"
    other.write_text('[apps.fromarg]\nsource = "."\n', encoding="utf-8")
    assert set(load_config(env={"ORCH_CONFIG": str(via_env)}).apps) == {"fromenv"}
    assert set(load_config(other, env={"ORCH_CONFIG": str(via_env)}).apps) == {"fromarg"}


def test_relative_source_is_resolved_against_the_config_file_not_the_cwd(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI runs the tool from anywhere; a relative source must not change meaning with the cwd."""
    path = write_config(f'[apps.shop]\nsource = "../src/shop"\n[apps.abs]\nsource = "/opt/abs"{OTHER_PORTS}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, env={})
    assert cfg.app("shop").source == (tmp_path / "src" / "shop").resolve()
    assert cfg.app("abs").source == Path("/opt/abs")


def test_all_app_keys(write_config: WriteConfig) -> None:
    cfg = load_config(
        write_config(
            "[apps.shop]\n"
            'source = "/srv/shop"\n'
            'dockerfile = "docker/Dockerfile.prod"\n'
            'health_path = "/healthz"\n'
            'version_path = "/version"\n'
            "staging_port = 9001\n"
            "prod_port = 9000\n"
            "container_port = 8080\n"
        ),
        env={},
    )
    assert cfg.app("shop") == AppConfig(
        name="shop",
        source=Path("/srv/shop"),
        dockerfile="docker/Dockerfile.prod",
        health_path="/healthz",
        staging_port=9001,
        prod_port=9000,
        container_port=8080,
        version_path="/version",
    )


def test_settings_from_the_orchestrator_table(write_config: WriteConfig) -> None:
    cfg = load_config(
        write_config(
            "[orchestrator]\n"
            'database_url = "postgresql+psycopg://u@db/orch"\n'
            'log_format = "JSON"\n'
            'log_level = "debug"\n'
            "image_freshness_enabled = false\n"
            'image_freshness_repos = ["shop", " blog "]\n'
            "health_timeout_s = 5\n"
            "health_interval_s = 0.5\n"
            "drain_s = 0\n"
            f'[apps.shop]\nsource = "."\n[apps.blog]\nsource = "."{OTHER_PORTS}'
        ),
        env={},
    )
    assert cfg.settings == Settings(
        database_url="postgresql+psycopg://u@db/orch",
        log_format="json",
        log_level="debug",
        image_freshness_enabled=False,
        image_freshness_repos=frozenset({"shop", "blog"}),
        health_timeout_s=5.0,
        health_interval_s=0.5,
        drain_s=0.0,
    )


def test_environment_overrides_the_file(write_config: WriteConfig) -> None:
    path = write_config('[orchestrator]\nlog_level = "debug"\nimage_freshness_enabled = true\n')
    cfg = load_config(
        path,
        env={
            "ORCH_LOG_LEVEL": "warning",
            "ORCH_IMAGE_FRESHNESS_ENABLED": "no",
            "ORCH_DATABASE_URL": "  sqlite:////tmp/x.db  ",
        },
    )
    assert cfg.settings.log_level == "warning"
    assert cfg.settings.image_freshness_enabled is False
    assert cfg.settings.database_url == "sqlite:////tmp/x.db"


def test_build_args_and_env_tables(write_config: WriteConfig) -> None:
    app = load_config(
        write_config(
            '[apps.shop]\nsource = "."\n'
            '[apps.shop.build_args]\nBASE_IMAGE = "python:3.12"\nJOBS = 4\n'
            '[apps.shop.env]\nLOG_LEVEL = "debug"\n'
        ),
        env={},
    ).app("shop")
    assert dict(app.build_args) == {"BASE_IMAGE": "python:3.12", "JOBS": "4"}
    assert dict(app.env) == {"LOG_LEVEL": "debug"}


def test_build_args_cannot_override_git_sha(write_config: WriteConfig) -> None:
    """GIT_SHA becomes the revision label every promotion trusts; the config must not be able to pin it."""
    message = bad(write_config('[apps.shop]\nsource = "."\nbuild_args = { GIT_SHA = "0000000" }\n'))
    assert "[apps.shop].build_args must not set GIT_SHA" in message


@pytest.mark.parametrize("key", ["build_args", "env"])
def test_build_args_and_env_must_be_tables_of_strings(write_config: WriteConfig, key: str) -> None:
    message = bad(write_config(f'[apps.shop]\nsource = "."\n{key} = {{ A = ["x"] }}\n'))
    assert f"[apps.shop].{key} must be a table of names to string values" in message


# --------------------------------------------------------------------------------------------------
# malformed files


def test_malformed_toml(write_config: WriteConfig) -> None:
    path = write_config("[apps.shop\nsource = \n")
    message = bad(path)
    assert message.startswith(f"{path} is not valid TOML")


def test_the_console_scripts_cache_gives_the_same_config_and_the_same_errors(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console script parses the file through its cache (codecache.py); what a command sees must not
    depend on whether the file's tables came from the cache or from the parser."""
    from orchestrator import codecache

    text = '[apps.shop]\nsource = "."\nstaging_port = 18501\nprod_port = 18500\n'
    path = write_config(text)
    parsed = load_config(str(path), env={})
    monkeypatch.setattr(codecache, "_installed", codecache.GeneratedCode(str(tmp_path / "code")))
    assert load_config(str(path), env={}) == parsed  # parsed, and kept
    assert codecache.installed().added == 1  # type: ignore[union-attr]
    assert load_config(str(path), env={}) == parsed  # from what was kept
    assert bad(write_config("[apps.shop\nsource = \n")).startswith(f"{path} is not valid TOML")


def test_config_that_is_not_utf8_is_bad_input_not_a_traceback(write_config: WriteConfig) -> None:
    """A config saved as UTF-16 (some editors' default) must be exit 2 naming the file; a traceback
    exits 1, which CI reads as 'a gate failed and the run was rolled back'."""
    path = write_config("")
    path.write_bytes('[apps.shop]\nsource = "."\n'.encode("utf-16"))
    assert str(path) in bad(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[app.shop]\nsource = "."\n', "unknown table(s) app; expected [apps.*]"),
        ('[apps.shop]\nsource = "."\nhealthpath = "/h"\n', "[apps.shop]: unknown key(s) healthpath"),
        ('[orchestrator]\nlogformat = "json"\n', "unknown key(s) in [orchestrator]: logformat"),
        ('apps = "shop"\n', "[orchestrator] and [apps] must be tables"),
        ("[apps]\nshop = 1\n", "[apps.shop] must be a table"),
        ('[apps.Shop]\nsource = "."\n', "[apps.Shop]: app names must be lowercase"),
        (
            "[apps.shop]\ndockerfile = 'Dockerfile'\n",
            "'source' (path to the app's git repository) is required",
        ),
        ("[apps.shop]\nsource = 3\n", "'source' (path to the app's git repository) is required"),
        ('[apps.shop]\nsource = "."\ndockerfile = ""\n', "[apps.shop].dockerfile must be a path"),
        ('[apps.shop]\nsource = "."\nhealth_path = "health"\n', "[apps.shop].health_path='health' must be"),
        ('[apps.shop]\nsource = "."\nversion_path = 1\n', "[apps.shop].version_path=1 must be an HTTP path"),
        ('[orchestrator]\nlog_level = "loud"\n', "[orchestrator].log_level='loud' must be one of"),
        ('[orchestrator]\nlog_format = "xml"\n', "[orchestrator].log_format='xml' must be one of"),
        ('[orchestrator]\ndatabase_url = " "\n', "[orchestrator].database_url must be a non-empty"),
        ('[orchestrator]\nimage_freshness_enabled = "maybe"\n', "[orchestrator].image_freshness_enabled"),
    ],
)
def test_invalid_content_is_rejected_naming_the_key(
    write_config: WriteConfig, text: str, fragment: str
) -> None:
    path = write_config(text)
    message = bad(path)
    assert fragment in message
    assert message.startswith(str(path)), "the message must say which file to fix"


@pytest.mark.parametrize("key", ["staging_port", "prod_port", "container_port"])
@pytest.mark.parametrize("value", ["0", "65536", "-1", '"8080"', "true", "80.5"])
def test_bad_ports(write_config: WriteConfig, key: str, value: str) -> None:
    message = bad(write_config(f'[apps.shop]\nsource = "."\n{key} = {value}\n'))
    assert f"[apps.shop].{key}=" in message
    assert "must be a port number between 1 and 65535" in message


@pytest.mark.parametrize("value", ["1", "65535"])
def test_port_bounds_are_inclusive(write_config: WriteConfig, value: str) -> None:
    cfg = load_config(write_config(f'[apps.shop]\nsource = "."\ncontainer_port = {value}\n'), env={})
    assert cfg.app("shop").container_port == int(value)


def test_staging_and_prod_on_the_same_port_is_rejected(write_config: WriteConfig) -> None:
    """Staging would answer prod's health check and the promotion would verify the wrong container."""
    message = bad(write_config('[apps.shop]\nsource = "."\nstaging_port = 9000\nprod_port = 9000\n'))
    assert "staging_port and prod_port are both 9000; they must differ" in message


def test_default_staging_port_colliding_with_explicit_prod_port(write_config: WriteConfig) -> None:
    assert "both 8501" in bad(write_config('[apps.shop]\nsource = "."\nprod_port = 8501\n'))


# --------------------------------------------------------------------------------------------------
# booleans and numbers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("YeS", True),
        (" yes\n", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("No", False),
        (True, True),
        (False, False),
    ],
)
def test_booleans_accept_the_documented_spellings(raw: str | bool, expected: bool) -> None:
    assert parse_bool("ORCH_X", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "", " ", "on", "off", "2", "y", "n", "truee", "-1"])
def test_booleans_reject_anything_else_naming_the_variable(raw: str) -> None:
    with pytest.raises(BadInput) as excinfo:
        parse_bool("ORCH_IMAGE_FRESHNESS_ENABLED", raw)
    assert excinfo.value.exit_code == 2
    assert excinfo.value.message.startswith(f"ORCH_IMAGE_FRESHNESS_ENABLED={raw!r} is not a boolean")
    assert "true/false, 1/0 or yes/no" in excinfo.value.message


@pytest.mark.parametrize("raw", ["maybe", ""])
def test_bad_boolean_in_the_environment_fails_config_loading(raw: str, tmp_path: Path) -> None:
    """An empty export (ORCH_IMAGE_FRESHNESS_ENABLED=) must not silently mean either on or off."""
    message = bad(None, env={"ORCH_IMAGE_FRESHNESS_ENABLED": raw, "ORCH_CONFIG": ""})
    assert f"ORCH_IMAGE_FRESHNESS_ENABLED={raw!r} is not a boolean" in message


@pytest.mark.parametrize(
    ("var", "raw", "fragment"),
    [
        ("ORCH_HEALTH_TIMEOUT_S", "soon", "is not a number"),
        ("ORCH_HEALTH_TIMEOUT_S", "0", "must be a number >= 0.1"),
        ("ORCH_HEALTH_TIMEOUT_S", "-5", "must be a number >= 0.1"),
        ("ORCH_HEALTH_INTERVAL_S", "0.001", "must be a number >= 0.01"),
        ("ORCH_HEALTH_INTERVAL_S", "", "is not a number"),
        ("ORCH_LOG_LEVEL", "verbose", "must be one of: debug, info, warning, error"),
        ("ORCH_LOG_FORMAT", "text", "must be one of: auto, json, console"),
        ("ORCH_DATABASE_URL", "", "ORCH_DATABASE_URL must be a non-empty SQLAlchemy URL"),
    ],
)
def test_bad_environment_values_name_the_variable(var: str, raw: str, fragment: str) -> None:
    message = bad(None, env={var: raw})
    assert var in message
    assert fragment in message


@pytest.mark.parametrize("var", ["ORCH_HEALTH_TIMEOUT_S", "ORCH_HEALTH_INTERVAL_S"])
def test_health_timings_reject_nan(var: str) -> None:
    """float() accepts 'nan', and NaN compares False against every bound (so ``value < minimum`` lets
    it through): a health wait bounded by a NaN deadline either never polls or never gives up."""
    assert var in bad(None, env={var: "nan"})


def test_boolean_toml_value_is_not_a_number(write_config: WriteConfig) -> None:
    """TOML ``true`` is a bool, and float(True) == 1.0: it must not pass as a one-second timeout."""
    message = bad(write_config("[orchestrator]\nhealth_timeout_s = true\n"))
    assert "[orchestrator].health_timeout_s=True must be a number" in message


# --------------------------------------------------------------------------------------------------
# unknown variables, freshness scope


def test_unknown_orch_variable_is_rejected(write_config: WriteConfig) -> None:
    """A typo such as ORCH_IMAGE_FRESHNES_ENABLED=false would otherwise leave the check on unnoticed."""
    message = bad(
        write_config('[apps.shop]\nsource = "."\n'),
        env={"ORCH_IMAGE_FRESHNES_ENABLED": "false", "ORCH_ZZZ": "1", "PATH": "/bin", "ORCHID": "x"},
    )
    assert "unknown variable(s) ORCH_IMAGE_FRESHNES_ENABLED, ORCH_ZZZ" in message
    assert "ORCHID" not in message and "PATH" not in message


def test_unknown_variable_is_rejected_even_without_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "unknown variable(s) ORCH_DB_URL" in bad(None, env={"ORCH_DB_URL": "sqlite://"})


@pytest.mark.parametrize("var", sorted(ENV_VARS))
def test_no_documented_variable_is_refused_as_unknown(
    var: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENV_VARS is the allow-list; a variable documented there but refused as unknown is a trap."""
    monkeypatch.chdir(tmp_path)
    try:
        load_config(env={var: ""})
    except BadInput as exc:  # an empty value may be invalid; being unknown may not
        assert "unknown variable" not in exc.message


def test_documented_settings_variables_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_config(
        env={
            "ORCH_CONFIG": "",
            "ORCH_DATABASE_URL": "sqlite://",
            "ORCH_LOG_FORMAT": "json",
            "ORCH_LOG_LEVEL": "error",
            "ORCH_IMAGE_FRESHNESS_ENABLED": "yes",
            "ORCH_IMAGE_FRESHNESS_REPOS": "shop",
            "ORCH_HEALTH_TIMEOUT_S": "2.5",
            "ORCH_HEALTH_INTERVAL_S": "0.25",
            "ORCH_DRAIN_S": "12.5",
        }
    ).settings
    assert (s.database_url, s.log_format, s.log_level) == ("sqlite://", "json", "error")
    assert s.image_freshness_enabled is True and s.image_freshness_repos == frozenset({"shop"})
    assert (s.health_timeout_s, s.health_interval_s, s.drain_s) == (2.5, 0.25, 12.5)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("shop", {"shop"}),
        ("shop,blog", {"shop", "blog"}),
        (" shop , blog ,, ", {"shop", "blog"}),
        ("", set()),
        (",", set()),
    ],
)
def test_freshness_repos_from_the_environment(raw: str, expected: set[str]) -> None:
    s = load_config(None, env={"ORCH_IMAGE_FRESHNESS_REPOS": raw, "ORCH_CONFIG": ""}).settings
    assert s.image_freshness_repos == frozenset(expected)


def test_freshness_repos_from_a_toml_string(write_config: WriteConfig) -> None:
    s = load_config(
        write_config(
            '[orchestrator]\nimage_freshness_repos = "shop, blog"\n'
            f'[apps.shop]\nsource = "."\n[apps.blog]\nsource = "."{OTHER_PORTS}'
        ),
        env={},
    ).settings
    assert s.image_freshness_repos == frozenset({"shop", "blog"})


def test_freshness_repos_naming_an_unknown_app_is_a_warning(write_config: WriteConfig) -> None:
    """CI sets ORCH_IMAGE_FRESHNESS_REPOS once for many repositories, so a name this config does not
    define must not stop the deploy; it is reported, with the apps whose check the scope leaves out
    (a typo such as 'shp' would otherwise switch the check off for 'shop' unnoticed)."""
    path = write_config(f'[apps.shop]\nsource = "."\n[apps.blog]\nsource = "."{OTHER_PORTS}')
    cfg = load_config(path, env={"ORCH_IMAGE_FRESHNESS_REPOS": "shp,blog"})
    assert cfg.settings.image_freshness_repos == {"shp", "blog"}
    (warning,) = cfg.warnings
    assert warning.startswith("ORCH_IMAGE_FRESHNESS_REPOS names app(s)")
    assert str(path.resolve()) in warning and "does not define: shp (known apps: blog, shop)" in warning
    assert "check_staging_image_fresh is skipped for shop" in warning
    scoped = load_config(path, env={"ORCH_IMAGE_FRESHNESS_REPOS": "shop"})
    assert scoped.settings.image_freshness_repos == {"shop"} and scoped.warnings == ()


def test_freshness_repos_warning_names_the_toml_key_when_set_there(write_config: WriteConfig) -> None:
    cfg = load_config(
        write_config('[orchestrator]\nimage_freshness_repos = ["other"]\n[apps.shop]\nsource = "."\n'),
        env={},
    )
    (warning,) = cfg.warnings
    assert warning.startswith("[orchestrator].image_freshness_repos names app(s)")


def test_no_warnings_for_an_ordinary_config(write_config: WriteConfig) -> None:
    assert load_config(write_config('[apps.shop]\nsource = "."\n'), env={}).warnings == ()


@pytest.mark.parametrize(
    ("raw", "blamed"),
    [
        ("shop, my app", "'my app'"),
        ("Shop", "'Shop'"),
        ("shop,team/shop", "'team/shop'"),
        ("-shop,blog", "'-shop'"),
    ],
)
def test_malformed_freshness_repos_is_bad_input(write_config: WriteConfig, raw: str, blamed: str) -> None:
    """Not a list of app names at all (spaces, uppercase, slashes): a broken value, not another repo's app."""
    message = bad(write_config('[apps.shop]\nsource = "."\n'), env={"ORCH_IMAGE_FRESHNESS_REPOS": raw})
    assert f"ORCH_IMAGE_FRESHNESS_REPOS={raw!r}: {blamed} cannot be app name(s)" in message
    assert "use a comma-separated list of app names" in message


def test_malformed_freshness_repos_in_toml_is_bad_input(write_config: WriteConfig) -> None:
    message = bad(write_config('[orchestrator]\nimage_freshness_repos = ["shop", "Blog"]\n'))
    assert "[orchestrator].image_freshness_repos=" in message and "'Blog' cannot be app name(s)" in message


# --------------------------------------------------------------------------------------------------
# step timeouts and the lock lease

LIMITS = {
    "build_timeout_s": 1800.0,
    "push_timeout_s": 600.0,
    "pull_timeout_s": 600.0,
    "staging_check_timeout_s": 120.0,
    "compose_timeout_s": 600.0,
    "lock_lease_s": 30.0,
}


def test_step_limits_defaults() -> None:
    settings = Settings(database_url="sqlite://")
    assert {key: getattr(settings, key) for key in LIMITS} == LIMITS


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_step_limits_from_the_environment_and_the_file(write_config: WriteConfig, key: str) -> None:
    var = "ORCH_" + key.upper()
    assert var in ENV_VARS
    path = write_config(f"[orchestrator]\n{key} = 7\n")
    assert getattr(load_config(path, env={}).settings, key) == 7.0
    assert getattr(load_config(path, env={var: "2.5"}).settings, key) == 2.5, "the variable wins"


@pytest.mark.parametrize("key", sorted(LIMITS))
@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("0", "must be a number >= 1"),
        ("0.5", "must be a number >= 1"),
        ("-3", "must be a number >= 1"),
        ("nan", "must be a number >= 1"),
        ("inf", "must be a number >= 1"),
        ("soon", "is not a number"),
    ],
)
def test_step_limits_are_validated(key: str, raw: str, fragment: str) -> None:
    """A zero or NaN limit would end every step at once or never; both are typos, not settings."""
    var = "ORCH_" + key.upper()
    message = bad(None, env={var: raw, "ORCH_CONFIG": ""})
    assert f"{var}={raw!r}" in message and fragment in message


def test_step_limit_in_toml_must_not_be_a_boolean(write_config: WriteConfig) -> None:
    message = bad(write_config("[orchestrator]\nbuild_timeout_s = true\n"))
    assert "[orchestrator].build_timeout_s=True must be a number" in message


@pytest.mark.parametrize(
    ("var", "raw"), [("ORCH_TEST_CRASH_AT", "before:build"), ("ORCH_TEST_CRASH_SIGNAL", "TERM")]
)
def test_test_only_crash_variables_are_accepted_but_are_not_settings(
    var: str, raw: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash tests set these on the real CLI; the unknown-variable check must let them through."""
    monkeypatch.chdir(tmp_path)
    assert ENV_VARS[var].startswith("test-only: ")
    assert load_config(env={var: raw}).settings == load_config(env={}).settings


def test_env_example_lists_every_variable() -> None:
    """.env.example is the operator's reference: a variable missing there is undiscoverable. A variable
    whose default cannot be written as a value (ORCH_DATABASE_URL) is listed commented out."""
    example = Path(__file__).resolve().parents[2] / ".env.example"
    lines = [line.strip() for line in example.read_text(encoding="utf-8").splitlines()]
    listed = {
        line.removeprefix("# ").split("=", 1)[0].strip()
        for line in lines
        if line.removeprefix("# ").startswith("ORCH_") and "=" in line
    }
    assert listed == set(ENV_VARS)


@pytest.mark.parametrize(
    ("second", "clash"),
    [
        ("", "[apps.blog].staging_port = 8501 is already used by [apps.shop].staging_port"),
        (
            "staging_port = 8500\nprod_port = 9000\n",
            "[apps.blog].staging_port = 8500 is already used by [apps.shop].prod_port",
        ),
    ],
)
def test_two_environments_on_one_port_are_rejected(
    write_config: WriteConfig, second: str, clash: str
) -> None:
    """Two environments on one host port would answer each other's health checks."""
    path = write_config(f'[apps.shop]\nsource = "."\n[apps.blog]\nsource = "."\n{second}')
    with pytest.raises(BadInput) as exc:
        load_config(path, env={})
    assert clash in exc.value.message


@pytest.mark.parametrize(
    ("enabled", "repos", "app", "applies"),
    [
        (True, frozenset(), "shop", True),  # on, unscoped: every app
        (True, frozenset({"shop"}), "shop", True),
        (True, frozenset({"shop"}), "blog", False),  # on, scoped to other apps
        (False, frozenset(), "shop", False),  # kill-switch wins
        (False, frozenset({"shop"}), "shop", False),
    ],
)
def test_freshness_applies_to(enabled: bool, repos: frozenset[str], app: str, applies: bool) -> None:
    settings = Settings(
        database_url="sqlite://", image_freshness_enabled=enabled, image_freshness_repos=repos
    )
    assert settings.freshness_applies_to(app) is applies


def test_config_values_are_frozen(write_config: WriteConfig) -> None:
    """Values cross layers; a gate mutating the shared config would change later gates' inputs."""
    cfg: Config = load_config(write_config('[apps.shop]\nsource = "."\n'), env={})
    with pytest.raises(AttributeError):
        cfg.app("shop").prod_port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.settings.image_freshness_enabled = False  # type: ignore[misc]
