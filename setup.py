"""Builds the gRPC stubs into the package: `shortlist/v1` is generated from proto/ (it is
git-ignored), so `pip install .` and a built wheel run protoc (grpcio-tools, a build
requirement in pyproject.toml) instead of relying on `make proto` having run."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTO_ROOT = ROOT / "proto"


def generate_stubs(out: Path) -> list[str]:
    """protoc's Python, .pyi and gRPC stubs of proto/shortlist/v1 under `out`; the files."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("shortlist/v1/*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}/shortlist/v1")
    (out / "shortlist" / "v1").mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}"]
    args += [f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(protos))
    init = out / "shortlist" / "v1" / "__init__.py"
    init.touch()
    return sorted(str(p) for p in (out / "shortlist" / "v1").iterdir() if p.is_file())


class BuildPyWithStubs(build_py):
    """build_py, then the stubs: into the build directory (a wheel), or beside the sources
    for an editable install (what `make proto` does)."""

    def run(self) -> None:
        super().run()
        target = ROOT if self.editable_mode else Path(self.build_lib)
        self._stubs = generate_stubs(target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + list(getattr(self, "_stubs", []))


setup(cmdclass={"build_py": BuildPyWithStubs})
