"""Every third-party module the package imports is declared in pyproject.toml (so `pip install
.` works without requirements.txt): the layers the services and training use in the
dependencies, tools/ also in the `tools` and `bench` extras; and every declared one is pinned
in requirements.txt."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<=>\[ ]", name, maxsplit=1)[0]).lower()


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m != "shortlist"}


def test_every_imported_distribution_is_declared():
    base = {norm(d) for d in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]
    tools = base | {norm(d) for d in extras["tools"] + extras["bench"]}
    owners = md.packages_distributions()
    missing = []
    for path in sorted((ROOT / "shortlist").rglob("*.py")):
        if "v1" in path.relative_to(ROOT).parts:
            continue  # generated stubs: protobuf and grpcio
        declared = tools if "tools" in path.relative_to(ROOT).parts else base
        for module in sorted(imports(path)):
            dists = {norm(d) for d in owners.get(module, [module])}
            if not dists & declared:
                missing.append(f"{path.relative_to(ROOT)}: {module} ({', '.join(sorted(dists))})")
    assert not missing, missing


def test_every_declared_distribution_is_pinned_in_requirements():
    pinned = {
        norm(line)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    declared = list(PROJECT["dependencies"])
    for name, extra in PROJECT["optional-dependencies"].items():
        if name != "bench":  # the bench peers are installed by make bench-peers only
            declared += extra
    assert {norm(d) for d in declared} - pinned == set()
