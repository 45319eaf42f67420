"""The layering STYLE.md promises, checked on the source: CLI -> service -> adapters, never around.

Hazard: a module below the CLI that imports click (errors used to subclass ``click.ClickException``)
ties the domain to one front end and lets a layer print or exit behind the CLI's back; the CLI reading
the store directly bypasses the service's validation and shapes.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE)): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_below_the_cli_imports_click() -> None:
    offenders = [
        name
        for name, imported in _modules().items()
        if Path(name).parts[0] != "cli" and any(m == "click" or m.startswith("click.") for m in imported)
    ]
    assert offenders == [], f"only orchestrator/cli/ may import click: {offenders}"


def test_one_http_client_inside_the_package() -> None:
    """health probes, /version checks and the registry share httpclient.py (scripts/staging_check.py
    runs standalone and keeps its own). The Docker engine's API is the adapter's, spoken by the SDK
    and, on a local engine's unix socket, by docker_wire.py; both of ours speak HTTP/1.1 through
    http1.py, which imports no HTTP library at all (http.client brings ``email`` and ``ssl``)."""
    allowed = {"httpclient.py"}
    offenders = [
        name
        for name, imported in _modules().items()
        if name not in allowed and {"urllib.request", "http.client"} & imported
    ]
    assert offenders == [], f"HTTP requests go through orchestrator/httpclient.py: {offenders}"


def test_the_cli_reads_and_changes_history_only_through_the_service() -> None:
    """Every call in orchestrator/cli/ of a name the Store has goes to ``inv.service()``, never to a store."""
    from orchestrator.store.repository import Store

    # close() is the Invocation's lifecycle (it opened the store for the service), not a query.
    store_methods = {n for n in dir(Store) if not n.startswith("_")} - {"close"}
    modules = sorted((PACKAGE / "cli").glob("*.py"))
    assert len(modules) > 1, modules
    direct = [
        f"{path.name} line {node.lineno}: .{node.func.attr}()"
        for path in modules
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in store_methods
        and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "views")
        and not (
            isinstance(node.func.value, ast.Call)
            and isinstance(node.func.value.func, ast.Attribute)
            and node.func.value.func.attr == "service"
        )
    ]
    assert direct == [], f"the CLI calls the store directly: {direct}"
