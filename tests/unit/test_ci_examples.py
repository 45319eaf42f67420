"""examples/ci: every orchestrator command the GitHub Actions workflow and the GitLab CI file run must
exist, with the options given, in click's command tree; and each advance branches on the README's exit
codes. PyYAML is not a dependency here, so the files are read with a minimal parser for the subset of
YAML they use (block mappings and sequences, ``|`` literal blocks, plain and quoted scalars), which
also fails on anything outside that subset instead of guessing."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest

from orchestrator.cli import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ci"


# --------------------------------------------------------------------------------------------------
# a minimal YAML reader


class _Lines:
    """The file's meaningful lines (no blanks, no comment lines), each with its index in the file, so
    that a ``|`` block can be read from the file itself, blank and comment-like lines included."""

    def __init__(self, text: str) -> None:
        self.raw = text.splitlines()
        self.lines = [
            [n, line] for n, line in enumerate(self.raw) if line.strip() and not line.lstrip().startswith("#")
        ]
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i][1]
        assert "\t" not in line[: len(line) - len(line.lstrip())], f"tab indentation: {line!r}"
        return len(line) - len(line.lstrip(" ")), line.strip()


def _scalar(text: str) -> Any:
    text = re.sub(r"\s+#.*$", "", text) if not text.startswith(("'", '"')) else text
    if (text.startswith('"') and text.endswith('"')) or (text.startswith("'") and text.endswith("'")):
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part.strip()) for part in text[1:-1].split(",") if part.strip()]
    return text


def _block_text(src: _Lines, indent: int) -> str:
    """A ``|`` block: the file's lines after the one just read, while blank or indented deeper."""
    raw_i = src.lines[src.i - 1][0] + 1
    body: list[str] = []
    while raw_i < len(src.raw):
        line = src.raw[raw_i]
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            break
        body.append(line)
        raw_i += 1
    while src.i < len(src.lines) and src.lines[src.i][0] < raw_i:
        src.i += 1
    width = min((len(x) - len(x.lstrip(" ")) for x in body if x.strip()), default=0)
    return "\n".join(x[width:] for x in body).strip("\n") + "\n"


def _value(src: _Lines, indent: int, rest: str) -> Any:
    if rest == "|":
        return _block_text(src, indent)
    if rest:
        return _scalar(rest)
    nxt = src.peek()
    if nxt is None or (nxt[0] <= indent and not (nxt[0] == indent and nxt[1].startswith("- "))):
        return None
    return _node(src, nxt[0])


def _node(src: _Lines, indent: int) -> Any:
    first = src.peek()
    assert first is not None
    if first[1].startswith("- ") or first[1] == "-":
        items: list[Any] = []
        while (cur := src.peek()) is not None and cur[0] == indent and cur[1].startswith("-"):
            src.i += 1
            body = cur[1][1:].strip()
            if re.match(r"^[A-Za-z_][\w .-]*:(\s|$)", body):
                # "- key: value" opens a mapping whose keys sit two columns in.
                src.lines[src.i - 1][1] = " " * (indent + 2) + body
                src.i -= 1
                items.append(_mapping(src, indent + 2))
            else:
                items.append(_value(src, indent, body))
        return items
    return _mapping(src, indent)


def _mapping(src: _Lines, indent: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    while (cur := src.peek()) is not None and cur[0] == indent and not cur[1].startswith("- "):
        match = re.match(r"^([^:]+?):(?:\s+(.*))?$", cur[1])
        assert match, f"not a 'key: value' line: {cur[1]!r}"
        src.i += 1
        key, rest = match.group(1).strip(), (match.group(2) or "").strip()
        assert key not in out, f"duplicate key {key!r}"
        out[key] = _value(src, indent, rest)
    nxt = src.peek()
    assert nxt is None or nxt[0] < indent, f"unexpected indentation at {nxt!r}"
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    src = _Lines(path.read_text(encoding="utf-8"))
    doc = _node(src, 0)
    assert src.peek() is None, f"{path.name}: unread line {src.peek()!r}"
    assert isinstance(doc, dict)
    return doc


def test_the_reader_on_a_sample(tmp_path: Path) -> None:
    sample = tmp_path / "sample.yml"
    sample.write_text(
        "a: 1\nb:\n  - x\n  - k: v\n    m: [p, q]\n  - |\n    line one\n\n    # kept\n    line two\n"
        "c: 'q # not a comment'\n",
        encoding="utf-8",
    )
    assert load_yaml(sample) == {
        "a": "1",
        "b": ["x", {"k": "v", "m": ["p", "q"]}, "line one\n\n# kept\nline two\n"],
        "c": "q # not a comment",
    }
    sample.write_text("a: 1\n   b: 2\n", encoding="utf-8")
    with pytest.raises(AssertionError):
        load_yaml(sample)


# --------------------------------------------------------------------------------------------------
# the commands in the scripts


def scripts_of(name: str) -> list[str]:
    doc = load_yaml(EXAMPLES / name)
    found: list[str] = []
    if name.startswith("github"):
        assert {"on", "jobs"} <= set(doc), doc.keys()
        for job in doc["jobs"].values():
            found += [step["run"] for step in job["steps"] if "run" in step]
    else:
        assert "stages" in doc
        for key, job in doc.items():
            if isinstance(job, dict) and "script" in job:
                assert job.get("stage") in doc["stages"], f"job {key} names no declared stage"
                found += job["script"]
    assert found, f"{name}: no scripts found"
    return found


# orchestrator in command position: at the start of a line, or after $( ; && || {. Not inside an echoed
# message (those are checked by reading them).
_CALL = re.compile(r"(?:^\s*|\$\(|;\s*|&&\s*|\|\|\s*|\{\s*)orchestrator\s+([^\n;)|&>]*)", re.MULTILINE)


def orchestrator_calls(script: str) -> list[list[str]]:
    """Every orchestrator command line in a shell script, split as the shell would (after joining
    backslash continuations); expansions like "$RUN_ID" stay as single words."""
    text = script.replace("\\\n", " ")
    return [shlex.split(m.group(1)) for m in _CALL.finditer(text)]


def check_command(argv: list[str]) -> str:
    """Walk click's tree with ``argv``; fail on an unknown command, option or missing argument."""
    group: click.Command = cli
    path: list[str] = []
    while isinstance(group, click.Group):
        assert argv, f"orchestrator {' '.join(path)}: no subcommand"
        name, argv = argv[0], argv[1:]
        sub = group.get_command(click.Context(group), name)
        assert sub is not None, f"orchestrator {' '.join(path)} has no command {name!r}"
        group, path = sub, [*path, name]
    options = {opt: p for p in group.params if isinstance(p, click.Option) for opt in p.opts}
    arguments = [p for p in group.params if isinstance(p, click.Argument)]
    positional = 0
    while argv:
        word, argv = argv[0], argv[1:]
        if word.startswith("--"):
            opt = options.get(word)
            assert opt is not None, f"orchestrator {' '.join(path)} has no option {word}"
            if not opt.is_flag:
                assert argv and not argv[0].startswith("--"), f"{word} needs a value"
                argv = argv[1:]
        else:
            positional += 1
    required = sum(1 for a in arguments if a.required)
    assert required <= positional <= len(arguments), (
        f"orchestrator {' '.join(path)} takes {len(arguments)} argument(s), got {positional}"
    )
    return " ".join(path)


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_every_orchestrator_command_exists_with_those_options(name: str) -> None:
    used = {check_command(argv) for script in scripts_of(name) for argv in orchestrator_calls(script)}
    assert {"run start", "advance", "status", "metrics"} <= used, used


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_every_advance_branches_on_the_exit_codes(name: str) -> None:
    """0 go on, 1 refused (gate or rejection), 3 not now (with the awaiting-approval case named on the
    prod edge), 4 nothing decided: the README's table, each with a branch of its own."""
    advances = [s for s in scripts_of(name) if "orchestrator advance" in s]
    assert len(advances) == 2
    for script in advances:
        branches = set(re.findall(r"^\s*(\d+|\*)\)", script, re.MULTILINE))
        assert {"0", "1", "3", "4", "*"} <= branches, script
    assert "awaiting_approval" in advances[1]


def test_the_checker_catches_mistakes() -> None:
    """The checks above could not fail if check_command accepted anything."""
    for bad in (["advance", "1", "--to"], ["advance", "1", "--bogus", "x"], ["rn", "start"], ["approve"]):
        with pytest.raises(AssertionError):
            check_command(bad)
    assert check_command(["approve", "1", "--reason", "ok"]) == "approve"
