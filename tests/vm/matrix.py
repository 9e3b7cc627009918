"""The kernel matrix: boots Debian's 5.10, 6.1 and 6.12 kernels under QEMU (virtme-ng, software
emulation) and runs tests/vm/guest.py in each, one boot per kernel. Fails (exit 1) with one
line per mismatch naming kernel, cgroup layout, variant, scenario and field; writes
docs/kernel-matrix.md from the results (tools/kernel_matrix_report.py).

    make test-kernels                      # everything: tools, kernels, boots, report
    python tests/vm/matrix.py --kernels 6.1
    python -m tools.kernel_matrix_report      # rewrite the doc from the last results

Needs root (apt-get, and BPF in the VM). Installs what it needs, idempotently: QEMU,
busybox, kmod, bcc and a foreign header tree from Debian; virtme-ng from PyPI into its own
venv. Kernels and tools are cached under $OOMTRACE_VM_CACHE (default /opt/oomtrace-vm);
results of the last run are in .cache/vm-results/<series>/ (results.json, console.log).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import kernels  # type: ignore[import-not-found]  # noqa: E402

from tools.kernel_matrix_report import DOC, RESULTS, SERIES, leads, write_doc  # noqa: E402

VNG_VENV: Path = kernels.CACHE.parent / "vng-venv"
VIRTME_NG = "virtme-ng==1.42"
APT_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "file", "python3-bpfcc", "linux-headers-amd64")
BOOT_TIMEOUT_S = 1200  # per kernel; a whole kernel takes 4-7 minutes here


def say(message: str) -> None:
    print(f"matrix: {message}", flush=True)


class MatrixError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Tools


def ensure_tools() -> Path:
    """Installs what is missing; returns the vng executable."""
    missing = [
        p
        for p in APT_PACKAGES
        if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout
        != "install ok installed"
    ]
    if missing:
        say(f"apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
            result = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise MatrixError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
    vng = VNG_VENV / "bin/vng"
    if not vng.exists():
        say(f"installing {VIRTME_NG} into {VNG_VENV}")
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VNG_VENV)], check=True)
        result = subprocess.run(
            [str(VNG_VENV / "bin/pip"), "install", "-q", VIRTME_NG], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise MatrixError(f"pip install {VIRTME_NG} failed: {result.stderr.strip()[-2000:]}")
    return vng


def foreign_headers() -> tuple[Path, Path, Path]:
    """This host's Debian header tree, merged by oomtrace's own tracer/kernel/headers.py into the
    cache directory the VM's `--headers-cache` points at: the 'no own headers' tree.
    Returns (cache dir, merged tree, the tree as a tar for staging in the VM)."""
    from tracer.kernel.headers import find_headers

    cache = kernels.CACHE / "foreign-headers"
    tree = find_headers("none", modules_root=Path("/nonexistent"), cache_dir=cache, env={})
    assert tree.path is not None
    say(f"foreign header tree: {tree.origin} ({tree.path})")
    tar: Path = kernels.tar_tree(tree.path, cache / f"{tree.path.name}.{kernels.TAR_NAME}")
    return cache, tree.path, tar


# ---------------------------------------------------------------------------------------------
# Boots


@dataclass(frozen=True)
class Boot:
    """How one VM boot went; what the guest learnt comes back as files in its rwdir."""

    seconds: float
    timed_out: bool
    guest_exit: int | None  # None: the script never reported an exit (crash, timeout)
    console: Path


def boot(
    vng: Path,
    kernel: kernels.Kernel,
    guest: list[str],
    out: Path,
    memory: str = "2G",
    timeout_s: float = BOOT_TIMEOUT_S,
) -> Boot:
    """Boots `kernel` once and runs `guest` (argv) in it; `out` is shared read-write with the
    VM and receives console.log."""
    cmd = [
        str(vng), "--run", kernel.vmlinuz,
        "--disable-kvm",  # KVM hangs on this machine kind; TCG works
        # Under TCG the kernel finds the emulated TSCs "unsynchronized" and falls back to the
        # HPET; then local_clock(), which stamps /dev/kmsg records, is clamped to one tick
        # past the last tick and lags by up to 4 ms whenever a tick is late: too coarse for
        # a lead of tens of microseconds. QEMU derives every vCPU's TSC from one virtual
        # clock, so trusting it is right here, as it is on real hardware with a stable TSC.
        # maxcpus=1: the kernel then patches sched_clock's static key to "stable" at boot
        # (int3 text patching), which on two TCG vCPUs at once was seen to oops; the guest
        # brings the second CPU online before it starts (guest.py: online_cpus()).
        "--append", "tsc=reliable maxcpus=1",
        "--force-9p", "--cpus", "2", "--memory", memory,
        "--verbose",  # the script's output only reaches the console: kept in console.log
        "--rwdir", str(out),  # results come back through this shared directory
        "--exec", " ".join(_quote(a) for a in guest),
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{VNG_VENV / 'bin'}:{os.environ.get('PATH', '')}")
    say(f"{kernel.series}: booting {kernel.release} ({kernel.version})")
    started = time.monotonic()
    console = out / "console.log"
    with console.open("w") as log:
        try:
            subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
    elapsed = time.monotonic() - started
    text = console.read_text(errors="replace")
    exit_line = re.search(r"virtme-ng-init: script exited with code (\d+)", text)
    return Boot(round(elapsed, 1), timed_out, int(exit_line.group(1)) if exit_line else None, console)


def run_suite(vng: Path, kernel: kernels.Kernel, foreign: tuple[Path, Path, Path]) -> dict[str, Any]:
    """One boot running tests/vm/guest.py: the matrix's scenarios on `kernel`."""
    out = RESULTS / kernel.series
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    guest = [
        sys.executable, str(HERE / "guest.py"),
        "--series", kernel.series, "--results", str(out), "--foreign-cache", str(foreign[0]),
        "--python", sys.executable,
        "--stage-tree", f"{kernel.headers_tar}:{kernel.headers}",
        "--stage-tree", f"{foreign[2]}:{foreign[1]}",
    ]  # fmt: skip
    booted = boot(vng, kernel, guest, out)
    results: dict[str, Any]
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as err:
        results = {
            "series": kernel.series,
            "done": False,
            "layouts": [],
            "errors": [f"no results.json: {err}"],
        }
    results["boot"] = {
        "release": kernel.release,
        "version": kernel.version,
        "seconds": booted.seconds,
        "timed_out": booted.timed_out,
        "guest_exit": booted.guest_exit,
        "console": str(booted.console),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------------------------
# Verdict


def failures(results: dict[str, Any]) -> list[str]:
    series = results.get("series", "?")
    release = results.get("boot", {}).get("release", "?")
    head = f"kernel {series} ({release})"
    lines = []
    boot_info = results.get("boot", {})
    if boot_info.get("timed_out"):
        lines.append(
            f"{head}: the VM did not finish within {BOOT_TIMEOUT_S} s (see {boot_info.get('console')})"
        )
    if boot_info.get("guest_exit") not in (0, None):
        lines.append(f"{head}: guest script exited {boot_info['guest_exit']}")
    for error in results.get("errors", []):
        lines.append(f"{head}: error: {error.strip().splitlines()[-1] if error.strip() else error}")
    if not results.get("done"):
        lines.append(f"{head}: the scenario suite did not complete (see {boot_info.get('console')})")
    for layout in results.get("layouts", []):
        for c in layout["checks"]:
            if not c["ok"]:
                lines.append(
                    f"{head} cgroup {c['cgroup']} scenario {c['scenario']} variant {c['variant']}: "
                    f"field {c['field']}: expected {_short(c['expected'])}, got {_short(c['actual'])}"
                )
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 400 else text[:400] + "..."


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default=",".join(SERIES), help="comma-separated series (default: all)")
    args = parser.parse_args()
    series = [s for s in args.kernels.split(",") if s]
    unknown = set(series) - set(SERIES)
    if unknown:
        parser.error(f"unknown kernel series {sorted(unknown)}; known: {', '.join(SERIES)}")
    started = time.monotonic()
    all_results: list[dict[str, Any]] = []
    problems: list[str] = []
    if os.geteuid() != 0:
        say("needs root (apt-get, and BPF and cgroups inside the VMs)")
        return 1
    try:
        vng = ensure_tools()
        foreign = foreign_headers()
        fetched = [kernels.fetch(s) for s in series]
    except (MatrixError, kernels.FetchError, subprocess.CalledProcessError) as err:
        say(f"FAIL setup: {err}")
        return 1
    for kernel in fetched:
        results = run_suite(vng, kernel, foreign)
        all_results.append(results)
        bad = failures(results)
        problems += bad
        checks = [c for layout in results.get("layouts", []) for c in layout["checks"]]
        values = leads(results)
        lead = f", lead {min(values):.0f}-{max(values):.0f} µs" if values else ""
        passed = len([c for c in checks if c["ok"]])
        say(f"{kernel.series}: {passed}/{len(checks)} checks passed in {results['boot']['seconds']} s{lead}")
    total = time.monotonic() - started
    if set(series) == set(SERIES):
        finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (RESULTS / "matrix.json").write_text(
            json.dumps({"seconds": round(total, 1), "finished": finished, "problems": problems})
        )
        write_doc(all_results, total)
        say(f"wrote {DOC.relative_to(REPO)}")
    say(f"matrix time {total:.0f} s ({total / 60:.1f} min)")
    for line in problems:
        print(f"FAIL {line}", flush=True)
    checks = [c for r in all_results for layout in r.get("layouts", []) for c in layout["checks"]]
    passed = len([c for c in checks if c["ok"]])
    # The plain closing line CI reads: checks of the matrix (each a field compared with the
    # kernel's report), and every other problem (a boot that died, a suite cut short) as failed.
    print(f"matrix: {passed} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
