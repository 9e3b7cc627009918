"""The reliability and bad-input suite (docs/reliability.md).

Tests that need root, BPF and real cgroups carry the `kernel` marker (set per module with
`pytestmark`); like tests/kernel they never skip: a host that cannot run them fails them.
The fuzz tests need nothing and run anywhere.

The soak's size: `pytest tests/reliability --soak-n 1000` (when this directory is named on
the command line) or OOMTRACE_SOAK_N=1000; default 200 OOMs, which keeps the whole suite
within about five minutes on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.workload import Zygote

DEFAULT_SOAK_N = 200


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-n",
        type=int,
        default=None,
        help="OOMs in the conservation soak (default $OOMTRACE_SOAK_N or 200; CI needs >= 200)",
    )


@pytest.fixture(scope="session")
def soak_n(request: pytest.FixtureRequest) -> int:
    try:
        given = request.config.getoption("--soak-n")
    except ValueError:  # this conftest was not loaded early enough to add the option
        given = None
    n = int(given or os.environ.get("OOMTRACE_SOAK_N") or DEFAULT_SOAK_N)
    if n < 2:
        raise pytest.UsageError("--soak-n must be at least 2")
    return n


@pytest.fixture(scope="session")
def kernel_host() -> None:
    """Root, and tracefs mounted (this machine kind does not mount it at boot)."""
    if os.geteuid() != 0:
        pytest.fail("reliability tests marked `kernel` need root (BPF, cgroups, /dev/kmsg); they never skip")
    tracing = Path("/sys/kernel/tracing")
    if not (tracing / "events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracing)], check=True)


@pytest.fixture(scope="session")
def zygote(kernel_host: None) -> Iterator[Zygote]:
    with Zygote() as z:
        yield z


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def samples(text: str) -> dict[str, float]:
    """Prometheus text exposition → {series: value} (comments dropped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def lost(port: int) -> dict[str, float]:
    """oomtrace_events_lost_total by reason, as the tracer exports it."""
    prefix = 'oomtrace_events_lost_total{reason="'
    return {
        series[len(prefix) : -2]: value
        for series, value in samples(scrape(port)).items()
        if series.startswith(prefix)
    }


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
