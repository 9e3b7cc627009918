"""The package's shape: its public API, what an install ships, and the one module that imports bcc."""

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import tracer

REPO = Path(__file__).resolve().parents[2]
# A path into the project as the docs write it, e.g. tracer/sinks/stream/hub.py or bpf/oomtrace.h.
PROJECT_PATH = r"\b((?:tracer|bpf|bench|tools|tests|scripts|deploy)/[\w/.-]*\w)"
PACKAGE = REPO / "tracer"


@pytest.mark.parametrize("name", tracer.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(tracer, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Enricher'"):
        _ = tracer.Enricher  # type: ignore[attr-defined]


def test_importing_the_package_loads_none_of_the_pipeline() -> None:
    probe = (
        "import sys, tracer; "
        "print(sorted(m for m in sys.modules if m.startswith(('tracer.', 'bcc', 'prometheus'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_loader_imports_bcc() -> None:
    importers = {
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if any(name == "bcc" or name.startswith("bcc.") for name in _imports(path))
    }
    assert importers == {"tracer/kernel/loader.py"}


def test_pyproject_ships_every_package_of_the_tree() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in PACKAGE.rglob("__init__.py")} | {
        "tracer.bpf"
    }
    assert set(config["packages"]) == on_disk


def test_every_source_file_the_docs_name_exists() -> None:
    import re

    documents = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "tests").rglob("*.md")]
    named = {(doc.name, ref) for doc in documents for ref in re.findall(PROJECT_PATH, doc.read_text())}
    # Not in a checkout, by design: benchmark output (git-ignored) and where an install puts bpf/.
    elsewhere = ("bench/results", "tracer/bpf")
    missing = sorted(
        (doc, ref) for doc, ref in named if not (REPO / ref).exists() and not ref.startswith(elsewhere)
    )
    assert not missing, missing


def test_every_module_the_readme_pipeline_table_names_exists() -> None:
    """The "How it works" table names modules relative to tracer/ (e.g. `sinks/stream/`)."""
    import re

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| step | what happens | where |") :].split("\n\n", 1)[0]
    named = re.findall(r"`((?:kernel|sources|resolve|enrich|sinks|http|cli)/[\w/.]*|\w+\.py)`", table)
    assert len(named) >= 15
    assert [ref for ref in named if not (REPO / "tracer" / ref).exists()] == []


DOTTED_NAME = re.compile(r"\btracer(?:\.[A-Za-z_]\w*)+")


def _dotted_names_in_strings(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for name in DOTTED_NAME.findall(node.value)
    }


def _resolves(dotted: str) -> bool:
    """An importable module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_tracer_name_in_a_test_or_bench_string_exists() -> None:
    # Strings are invisible to ruff and mypy: a subprocess wrapper importing a module that
    # moved (tests/vm/guest.py) once failed only in the VM matrix.
    files = sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")])
    missing = {f"{p.relative_to(REPO)}: {name}" for p in files for name in _dotted_names_in_strings(p)}
    # tracer.bpf is bpf/ installed as package data (pyproject's package-dir), not a module here.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    data_only = tuple(setuptools["package-dir"])
    missing = {
        entry
        for entry in missing
        if not entry.split(": ", 1)[1].startswith(data_only) and not _resolves(entry.split(": ", 1)[1])
    }
    assert not missing, sorted(missing)
