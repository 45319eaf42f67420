"""The generated-code cache (codecache.py): a dataclass made from a cached text is the same class as one
compiled afresh, a changed class compiles anew, and a file that is not plainly ours is never run."""

from __future__ import annotations

import dataclasses
import marshal
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import codecache
from orchestrator.codecache import GeneratedCode


def make_point(cache: GeneratedCode, *fields: str) -> type:
    """A frozen dataclass made while ``dataclasses`` compiles through ``cache``, as the CLI has it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataclasses, "exec", cache.exec, raising=False)
        return dataclasses.make_dataclass("Point", [(f, int) for f in fields], frozen=True)


def test_a_class_made_from_cached_code_behaves_as_one_compiled_afresh(tmp_path: Path) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    make_point(first, "x", "y")
    assert first.added > 0
    first.save()

    second = GeneratedCode(path)
    point = make_point(second, "x", "y")
    assert second.added == 0, "every text was in the file: nothing should have been compiled"
    a, b = point(1, 2), point(x=1, y=2)
    assert a == b and hash(a) == hash(b) and repr(a) == "Point(x=1, y=2)"
    assert a != point(2, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.x = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        point(1)  # the generated __init__ still requires y


def test_a_class_whose_fields_changed_compiles_anew(tmp_path: Path) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    make_point(first, "x", "y")
    first.save()

    second = GeneratedCode(path)
    point = make_point(second, "x", "y", "z")
    assert second.added > 0
    assert repr(point(1, 2, 3)) == "Point(x=1, y=2, z=3)"


def test_a_file_others_may_write_is_not_read(tmp_path: Path) -> None:
    """What the file holds is run: one that another user could have written is ignored, not trusted."""
    path = tmp_path / "code"
    first = GeneratedCode(str(path))
    make_point(first, "x")
    first.save()
    assert GeneratedCode(str(path)).stored()

    path.chmod(0o666)
    assert GeneratedCode(str(path)).stored() == {}


@pytest.mark.parametrize("content", [b"", b"not a cache at all", b"\x00" * 64])
def test_a_file_of_another_python_or_garbage_costs_only_the_compile(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "code"
    path.write_bytes(content)
    cache = GeneratedCode(str(path))
    assert cache.stored() == {}
    point = make_point(cache, "x")
    assert point(1) == point(1)
    cache.save()  # and the next process reads a good file again
    assert GeneratedCode(str(path)).stored().keys() == keys_of(cache)


def test_past_the_limit_a_save_keeps_only_what_this_process_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "code")
    old = GeneratedCode(path)
    make_point(old, "old_field")
    old.save()

    monkeypatch.setattr(codecache, "MAX_ENTRIES", 1)
    new = GeneratedCode(path)
    make_point(new, "new_field")
    new.save()
    kept = GeneratedCode(path).stored().keys()
    assert kept == keys_of(new) and not kept & keys_of(old)


def test_an_unwritable_folder_is_only_a_slower_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    cache = GeneratedCode(str(blocker / "orchestrator" / "code"))
    make_point(cache, "x")
    cache.save()  # no exception
    assert cache.added > 0


def test_the_console_script_keeps_its_generated_code_between_calls(tmp_path: Path) -> None:
    """The real entry point: the first call writes the cache, the second reads it and writes nothing."""
    script = Path(sys.executable).with_name("orchestrator")
    if not script.is_file():
        pytest.fail("the 'orchestrator' console script is not installed: pip install -e '.[dev]'")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    path = Path(codecache.default_path(env))

    def version() -> None:
        proc = subprocess.run([str(script), "--version"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    version()
    assert path.is_file() and path.stat().st_mode & 0o077 == 0, "private to this user"
    written = path.stat().st_mtime_ns
    assert GeneratedCode(str(path)).stored(), "the first call compiled dataclasses and kept their code"
    version()
    assert path.stat().st_mtime_ns == written, "the second call found every text and wrote nothing"


def keys_of(cache: GeneratedCode) -> set[codecache.Key]:
    """How the file names the texts ``cache`` used."""
    return {codecache._key(mode, text) for mode, text in cache.known}


def _rewrite_entries(path: str, entry: Callable[[Any], bytes]) -> None:
    """The file with every entry replaced by ``entry(value)``, under the same index keys (a file written
    by hand, as damage would leave it)."""
    entries = {key: entry(code) for key, code in GeneratedCode(path).stored().items()}
    index, offset = {}, 0
    for key, blob in entries.items():
        index[key] = (offset, len(blob))
        offset += len(blob)
    head = marshal.dumps(index)
    with open(path, "wb") as f:
        f.write(codecache._HEADER + len(head).to_bytes(codecache._LENGTH, "little") + head)
        f.writelines(entries.values())


def test_an_entry_that_does_not_unmarshal_is_compiled_again(tmp_path: Path) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    make_point(first, "x")
    first.save()
    _rewrite_entries(path, lambda code: b"\x00not code")

    cache = GeneratedCode(path)
    point = make_point(cache, "x")
    assert cache.added > 0 and point(1) == point(1)
    cache.save()
    assert GeneratedCode(path).stored().keys() == keys_of(cache), "the damaged entries were replaced"


def test_an_entry_that_is_not_code_is_compiled_again(tmp_path: Path) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    make_point(first, "x")
    first.save()
    _rewrite_entries(path, lambda code: marshal.dumps("a string, not code"))

    cache = GeneratedCode(path)
    point = make_point(cache, "x")
    assert cache.added > 0 and point(1) == point(1)


def test_a_process_unmarshals_only_the_entries_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    make_point(first, "x")
    make_point(first, "a", "b", "c")
    first.save()
    sizes: list[int] = []
    real_loads = marshal.loads
    monkeypatch.setattr(codecache.marshal, "loads", lambda data: sizes.append(len(data)) or real_loads(data))

    cache = GeneratedCode(path)
    assert len(sizes) == 1 and sizes[0] * 4 < os.path.getsize(path), "opening reads the small index alone"
    make_point(cache, "x")
    assert cache.added == 0
    assert 0 < len(sizes) - 1 < len(first.known), "only the entries of the class made were unmarshalled"


# The config's parsed tables (GeneratedCode.toml) ---------------------------------------------------

CONFIG = '[apps."demo"]\nsource = "."\nstaging_port = 18501\nprod_port = 18500\nlimits = { cpus = 0.5 }\n'


def test_a_config_parsed_once_is_read_from_the_file_without_the_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    tables = first.toml(CONFIG)
    assert tables == tomllib.loads(CONFIG) and first.added == 1
    first.save()

    def no_parse(text: str) -> dict[str, object]:
        raise AssertionError("parsed again, though the file had this text's tables")

    monkeypatch.setattr(tomllib, "loads", no_parse)
    second = GeneratedCode(path)
    assert second.toml(CONFIG) == tables and second.added == 0
    # Each call gets tables of its own: what one caller changes, the next does not see.
    second.toml(CONFIG)["apps"].clear()
    assert second.toml(CONFIG) == tables


def test_a_changed_config_is_parsed_anew(tmp_path: Path) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    first.toml(CONFIG)
    first.save()

    second = GeneratedCode(path)
    changed = CONFIG.replace("18501", "18601")
    assert second.toml(changed)["apps"]["demo"]["staging_port"] == 18601 and second.added == 1


def test_invalid_toml_raises_as_the_parser_does_and_is_not_kept(tmp_path: Path) -> None:
    import tomllib

    cache = GeneratedCode(str(tmp_path / "code"))
    with pytest.raises(tomllib.TOMLDecodeError):
        cache.toml("bad = [")
    assert cache.added == 0 and not cache.known


def test_a_config_with_a_date_is_parsed_each_time(tmp_path: Path) -> None:
    """marshal cannot write a date: such tables are returned as parsed and never stored."""
    cache = GeneratedCode(str(tmp_path / "code"))
    tables = cache.toml("when = 2026-11-27\n")
    assert str(tables["when"]) == "2026-11-27"
    assert cache.added == 0 and not cache.known


def test_a_damaged_config_entry_is_parsed_again(tmp_path: Path) -> None:
    path = str(tmp_path / "code")
    first = GeneratedCode(path)
    first.toml(CONFIG)
    first.save()
    _rewrite_entries(path, lambda tables: marshal.dumps(["a list, not tables"]))

    cache = GeneratedCode(path)
    assert cache.toml(CONFIG)["apps"]["demo"]["prod_port"] == 18500 and cache.added == 1
