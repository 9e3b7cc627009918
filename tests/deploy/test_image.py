"""The Dockerfile and scripts/build-rootfs.sh build the same root filesystem; no root needed here.

build-rootfs.sh runs the Dockerfile's own steps (so the package set is the Dockerfile's by
construction); these tests check that it does run exactly those steps, refuses what it
cannot reproduce, and rebuilds only when an input changes. tests/kernel/test_rootfs.py
checks the built root filesystem itself and runs the tracer from it.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-rootfs.sh"
DOCKERFILE = REPO / "Dockerfile"


def _plan(dockerfile: Path = DOCKERFILE) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(SCRIPT), "--print-plan"],
        env={"PATH": "/usr/bin:/bin", "OOMTRACE_DOCKERFILE": str(dockerfile)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in result.stdout.splitlines()]


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """A second, deliberately plain reading of the Dockerfile: join continuations, drop comments."""
    logical = re.sub(r"\\\n", "", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")))
    out = []
    for line in logical.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword, " ".join(rest.split())))
    return out


def _key(context: Path) -> str:
    result = subprocess.run(
        [str(SCRIPT), "--print-key"],
        env={"PATH": "/usr/bin:/bin", "OOMTRACE_DOCKERFILE": str(context / "Dockerfile")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def test_build_rootfs_runs_exactly_the_dockerfiles_run_steps_in_order() -> None:
    plan = _plan()
    ours = [" ".join(s["command"].split()) for s in plan if s["op"] == "RUN"]
    theirs = [rest for keyword, rest in _dockerfile_instructions(DOCKERFILE.read_text()) if keyword == "RUN"]

    assert ours == theirs
    assert len(ours) >= 3


def test_build_rootfs_bootstraps_the_dockerfiles_base_and_copies_what_it_copies() -> None:
    plan = _plan()
    instructions = _dockerfile_instructions(DOCKERFILE.read_text())

    assert plan[0] == {"op": "FROM", "image": "debian:bookworm-slim", "suite": "bookworm"}
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    copies = [(s["src"], s["dest"]) for s in plan if s["op"] == "COPY"]
    assert copies == [(r.split()[:-1], r.split()[-1]) for k, r in instructions if k == "COPY"]
    config_steps = [(s["op"], s.get("argv")) for s in plan if s["op"] in ("ENTRYPOINT", "CMD")]
    assert config_steps == [("ENTRYPOINT", ["oomtrace"]), ("CMD", ["run"])]


def test_the_image_installs_bcc_from_debian_and_no_compiler() -> None:
    runs = " ".join(s["command"] for s in _plan() if s["op"] == "RUN")
    installed = set()
    for match in re.finditer(r"apt-get install ([^&|;]+)", runs):
        installed |= {w for w in match.group(1).split() if not w.startswith("-")}

    assert {"python3-bpfcc", "python3-venv"} <= installed
    assert not {p for p in installed if re.match(r"(gcc|g\+\+|clang|build-essential|linux-headers)", p)}
    # The header packages are unpacked with dpkg-deb, never installed: their Depends pull in gcc.
    assert "apt-get download" in runs and "dpkg-deb --fsys-tarfile" in runs


@pytest.mark.parametrize(
    "instruction",
    ["USER nobody", "ADD https://example.org/x /x", "FROM debian:bookworm-slim AS second", "ENV A=$B"],
)
def test_build_rootfs_refuses_a_dockerfile_step_it_cannot_reproduce(tmp_path: Path, instruction: str) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM debian:bookworm-slim\nRUN true\n{instruction}\n")
    result = subprocess.run(
        [str(SCRIPT), "--print-plan"],
        env={"PATH": "/usr/bin:/bin", "OOMTRACE_DOCKERFILE": str(dockerfile)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert "build-rootfs:" in result.stderr


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A copy of the build context: the Dockerfile, .dockerignore and what they copy."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("tracer", "bpf"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_cache_key_changes_with_the_copied_sources_but_not_with_bytecode(context: Path) -> None:
    before = _key(context)
    (context / "tracer" / "__pycache__").mkdir(exist_ok=True)
    (context / "tracer" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    (context / "stray-notes.txt").write_text("not in the image")
    unchanged = _key(context)
    with (context / "tracer" / "cli" / "__init__.py").open("a") as f:
        f.write("\n# a change\n")
    changed = _key(context)

    assert before == unchanged
    assert changed != before


def test_the_cache_key_changes_with_a_dockerfile_step(context: Path) -> None:
    before = _key(context)
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("ca-certificates", "ca-certificates less"))

    assert _key(context) != before


def test_dockerignore_admits_the_copy_sources_and_keeps_caches_out() -> None:
    rules = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    sources = {src for s in _plan() if s["op"] == "COPY" for src in s["src"]}

    assert rules[0] == "*"  # nothing by default
    assert {r.lstrip("!").rstrip("/") for r in rules if r.startswith("!")} == sources
    assert {"**/__pycache__", "**/*.pyc"} <= set(rules)
