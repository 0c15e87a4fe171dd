"""The package's layers: imports only go down, nothing but tooling imports the tooling, and
the gateway never branches on where its stages run."""

from __future__ import annotations

import ast
from pathlib import Path

import shortlist

PACKAGE = Path(shortlist.__file__).parent
# Bottom to top. A module may import its own layer and the layers below it, never above.
LAYERS = [
    {"__init__", "config", "v1", "rpc", "ports"},
    # the public client (shortlist.client): apps import it, so it stays on the contract
    {"client"},
    # where the training stages run (in process or on Dask): below every stage that uses it
    {"compute"},
    {"data"},
    {"models"},
    {"feedback"},
    {"retrieval", "ranking"},
    {"bundle"},
    {"training"},
    {"evaluation"},
    {"services"},
    {"tools"},
]
LEVEL = {name: n for n, names in enumerate(LAYERS) for name in names}


def part_of(module: str) -> str | None:
    """The top-level part of the package a dotted module name belongs to."""
    parts = module.split(".")
    if parts[0] != "shortlist":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def submodule(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def imports() -> list[tuple[str, str, str]]:
    """(file, its part, imported part) for every import of the package's own modules."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "v1":
            continue
        here = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "shortlist":  # a submodule, or a name of shortlist/__init__
                    names = [f"shortlist.{a.name}" for a in node.names if submodule(a.name)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                part = part_of(name)
                if part is not None:
                    found.append((str(rel), here, part))
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts = {p for p in parts if not p.startswith((".", "_")) or p == "__init__"}
    parts.discard("py")
    assert parts - {"__pycache__"} <= set(LEVEL), parts - set(LEVEL)


def test_imports_only_go_down_the_layers():
    upward = [
        f"{path} ({here}) imports {there}"
        for path, here, there in imports()
        if LEVEL[there] > LEVEL[here]
    ]
    assert not upward, "\n".join(upward)


def test_nothing_outside_the_tooling_imports_it():
    found = [path for path, here, there in imports() if there == "tools" and here != "tools"]
    assert not found, found


def test_the_client_imports_the_contract_only():
    """Apps install the package to call the gateway: the client must not pull in serving."""
    found = {there for path, here, there in imports() if here == "client"}
    assert found <= {"v1", "rpc"}, found


def test_the_gateway_never_branches_on_colocation():
    text = (PACKAGE / "services" / "gateway.py").read_text()
    assert "colocate" not in text and "isinstance" not in text
