"""Secrets stay out of history: what redaction removes from captured evidence, and what it keeps.

Hazard: an app that logs its environment at start-up puts every configured secret into `logs_tail`,
stored in the database and printed by `runs show`; and a credential passed as a build arg leaks through
the image history without anyone being told.
"""

from __future__ import annotations

import pytest

from orchestrator.config import load_config
from orchestrator.redact import MASK, looks_secret, redact


def test_known_secret_values_are_cut_out_wherever_they_appear() -> None:
    log = (
        "starting\nDB_DSN=postgres://app@db/x?sslmode=require&pw=s3cr3t-value\nconnected with s3cr3t-value\n"
    )
    cleaned = redact(log, ["s3cr3t-value", "on"])
    assert "s3cr3t-value" not in cleaned
    assert cleaned.count(MASK) == 2
    assert "connected with" in cleaned and "starting" in cleaned  # the evidence itself survives


@pytest.mark.parametrize(
    ("line", "leaked"),
    [
        ("NPM_TOKEN=npm_abcdefghijkl", "npm_abcdefghijkl"),
        ("db_password: hunter2hunter2", "hunter2hunter2"),
        ('{"api_key": "AKIA0123456789"}', "AKIA0123456789"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y", "eyJhbGciOiJIUzI1NiJ9.x.y"),
        ("connecting to postgresql://orch:pa55word@10.0.0.1/db", "pa55word"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI/K7MDENG"),
    ],
)
def test_credential_shaped_values_are_masked(line: str, leaked: str) -> None:
    cleaned = redact(line)
    assert leaked not in cleaned and MASK in cleaned, cleaned


def test_ordinary_lines_are_left_alone() -> None:
    line = "GET /health 200 in 3 ms; author=alice; tokens_used=12 keys"
    assert redact(line) == line.replace("tokens_used=12", f"tokens_used={MASK}")
    assert redact("listening on 127.0.0.1:8500") == "listening on 127.0.0.1:8500"


def test_secret_looking_names() -> None:
    assert all(looks_secret(n) for n in ("NPM_TOKEN", "DB_PASSWORD", "aws_secret_access_key", "API_KEY"))
    assert not any(looks_secret(n) for n in ("NODE_ENV", "PORT", "GIT_SHA", "VERSION"))


def test_a_secret_looking_build_arg_is_a_warning(tmp_path: pytest.TempPathFactory) -> None:
    config = tmp_path / "orchestrator.toml"  # type: ignore[operator]
    config.write_text('[apps.shop]\nsource = "."\n[apps.shop.build_args]\nNPM_TOKEN = "x"\nNODE_ENV = "p"\n')
    (warning,) = load_config(config, env={}).warnings
    assert warning.startswith("[apps.shop].build_args.NPM_TOKEN looks like a secret")
