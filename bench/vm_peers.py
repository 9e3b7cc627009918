"""Benchmark 5 on kprobe kernels: bench/peers.py inside the kernel-matrix VMs.

This machine's kernel has no kprobes, so bcc's oomkill-bpfcc (a kprobe on oom_kill_process())
cannot attach here. Debian's 6.1, 6.12 and 5.10 kernels have them: each is booted under QEMU
with tests/vm/matrix.py's boot(), and the same benchmark runs inside, oomtrace, the /dev/kmsg
reader and oomkill-bpfcc side by side on the same OOMs.

    host:  run(series)  one boot per kernel; returns {"vm": ..., "kernels": {series: result}}
    VM:    python -m bench.vm_peers --series 6.1 --results DIR --stage-tree TAR:DIR ...

In the VM: the kernel's own header tree and bcc's LLVM libraries are copied into RAM
(tests/vm/guest.py; over 9p under emulation a bcc compile takes minutes), the kernel's usual
cgroup layout is mounted, bench.peers.run() runs, and DIR/peers.json is written. Whatever
goes wrong comes back as an "error" field, never as a missing result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import harness
from tests.vm import guest, matrix

SERIES = ("6.1", "6.12", "5.10")
# The layout a node on that kernel usually runs (Debian bullseye's systemd: v1 memory).
LAYOUT = {"5.10": "v1", "6.1": "v2", "6.12": "v2"}
# 50 cgroups of 32 MiB of limits, two tracers and oomkill-bpfcc (bcc's LLVM each), the staged
# libraries and header tree in RAM: 4 GiB keeps the VM itself far from a global OOM.
VM_MEMORY = "4G"
VM_CPUS = 2  # matrix.boot()'s
# Boot, staging, three bcc compiles one after the other, the OOMs: 100-145 s per kernel here;
# the margin is for a host busy with other work (emulation slows with it).
BOOT_TIMEOUT_S = 2400
READY_TIMEOUT_S = 900.0  # per tool: one bcc compile under TCG
RESULT_FILE = "peers.json"


# --- host -------------------------------------------------------------------------------------


def run(series: tuple[str, ...] = SERIES, spaced: int = 10, storm: int = 50) -> dict[str, Any]:
    vng = matrix.ensure_tools()
    results: dict[str, Any] = {}
    for name in series:
        try:
            kernel = matrix.kernels.fetch(name)
        except matrix.kernels.FetchError as err:
            results[name] = {"error": f"kernel not fetched: {err}"}
            continue
        results[name] = _boot_one(vng, kernel, spaced, storm)
        peer = results[name]
        harness.say(
            f"peers-vm {name}: {peer.get('error') or 'done'} in {peer.get('boot', {}).get('seconds')} s"
        )
    return {
        "vm": {"memory": VM_MEMORY, "cpus": VM_CPUS, "emulation": "QEMU TCG (virtme-ng), 9p root"},
        "kernels": results,
    }


def _boot_one(vng: Path, kernel: matrix.kernels.Kernel, spaced: int, storm: int) -> dict[str, Any]:
    out: Path = matrix.RESULTS / f"peers-{kernel.series}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [
        sys.executable, "-m", "bench.vm_peers",  # vng starts it in this directory (the repo)
        "--series", kernel.series, "--results", str(out),
        "--stage-tree", f"{kernel.headers_tar}:{kernel.headers}",
        "--spaced", str(spaced), "--storm", str(storm),
    ]  # fmt: skip
    booted = matrix.boot(vng, kernel, command, out, memory=VM_MEMORY, timeout_s=BOOT_TIMEOUT_S)
    result: dict[str, Any]
    try:
        result = json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError) as err:  # the guest writes it once, at its end
        how = f"timed out after {BOOT_TIMEOUT_S} s" if booted.timed_out else f"guest exit {booted.guest_exit}"
        result = {"error": f"no {RESULT_FILE} from the VM ({how}; {err}); console: {_tail(booted.console)}"}
    result["boot"] = {
        "release": kernel.release,
        "version": kernel.version,
        "seconds": booted.seconds,
        "timed_out": booted.timed_out,
        "guest_exit": booted.guest_exit,
        "console": str(booted.console.relative_to(harness.REPO)),
    }
    return result


def _tail(console: Path, chars: int = 1500) -> str:
    try:
        return console.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"unreadable: {err}"


# --- VM ---------------------------------------------------------------------------------------


def guest_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.vm_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--series", required=True, choices=SERIES)
    parser.add_argument("--results", required=True, type=Path, help="directory shared with the host")
    parser.add_argument("--stage-tree", action="append", default=[], metavar="TAR:DIR")
    parser.add_argument("--spaced", type=int, default=10)
    parser.add_argument("--storm", type=int, default=50)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"series": args.series, "layout": LAYOUT[args.series]}
    started = time.monotonic()
    try:
        _prepare(args.stage_tree, LAYOUT[args.series], result)
        from bench import peers

        result.update(
            peers.run(spaced=args.spaced, storm=args.storm, storms=1, ready_timeout_s=READY_TIMEOUT_S)
        )
        result["startups"] = [{"seconds": round(s, 1), "rss_bytes": r} for s, r in harness.STARTUPS]
    except Exception as err:  # the host must see why, not an empty directory
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
        harness.say(result["traceback"])
    result["guest_s"] = round(time.monotonic() - started, 1)
    tmp = args.results / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(args.results / RESULT_FILE)
    return 0


def _prepare(stage_trees: list[str], layout: str, result: dict[str, Any]) -> None:
    """The VM as the benchmark expects a node: tracefs, both CPUs, headers, cgroups."""
    if not Path("/sys/kernel/tracing/events").is_dir():
        guest.sh("mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing")
    guest.online_cpus()
    # virtme-ng's --verbose boots with loglevel=7: every report line also goes to the emulated
    # serial console. Left as it is (the same run at level 4 measured no clear difference).
    result["console_loglevel"] = int(Path("/proc/sys/kernel/printk").read_text().split()[0])
    result["release"] = os.uname().release
    result["cpus_online"] = Path("/sys/devices/system/cpu/online").read_text().strip()
    result["memory_bytes"] = harness.memory_total_bytes()
    t = time.monotonic()
    for spec in stage_trees:
        tar, tree = spec.split(":", 1)
        guest.stage_header_tree(tar, tree)
    # Inherited by both tracers and by oomkill-bpfcc (its /usr/bin/python3 loads libbcc too).
    os.environ["LD_LIBRARY_PATH"] = guest.stage_libraries()
    result["stage_s"] = round(time.monotonic() - t, 1)
    guest.setup_layout(layout)


if __name__ == "__main__":
    sys.exit(guest_main())
