"""Runs inside the VM (virtme-ng): every scenario of one kernel, against the real `oomtrace run`.

For each cgroup layout the kernel is tested with, four tracer variants run side by side and
watch the same real OOMs, so one OOM checks every variant against the same kernel report:

  fentry   the kernel's own headers (/lib/modules/<release>/build), BTF: best tier expected
  kprobe   the same, with fentry ruled out (as on a kernel whose trampolines refuse to load)
  foreign  no `build` link (a private mount namespace hides it), bcc compiles against this
           host's foreign header tree; struct offsets from the VM kernel's BTF
  no-btf   foreign headers and --no-btf: tracepoint fields and helpers only

Every OOM is compared with the kernel's own report from /dev/kmsg (tracer/sources/kmsg.py). Results
are written as JSON to the results directory (shared read-write with the host) after every
scenario, so a crash or timeout still leaves what was learnt.

Usage (in the VM): python tests/vm/guest.py --series 6.1 --results DIR --foreign-cache DIR
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tracer.cli.sandbox import PodSandbox  # noqa: E402
from tracer.sources.kmsg import KILLED_LINE_FIELDS, KmsgReader, OomReportParser, printk_offset_ns  # noqa: E402

MIB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")
PROBES = ("memcg_oom", "oom_context", "oom_kill", "near_oom", "charge_failure")

# Cgroup layouts per kernel series: v1 = memory controller on a v1 hierarchy only ("v1"),
# or v1 memory next to cgroup2 at /sys/fs/cgroup/unified ("hybrid", as on SLE Micro); v2.
LAYOUTS = {"5.10": ("v1",), "6.1": ("hybrid", "v2"), "6.12": ("v2",)}

VARIANTS = ("fentry", "kprobe", "foreign", "no-btf")
EXPECTED_TIERS = {
    "fentry": dict.fromkeys(PROBES, "fentry"),
    "kprobe": dict.fromkeys(PROBES, "kprobe"),
    "foreign": dict.fromkeys(PROBES, "fentry"),
    # Without BTF nothing may read a kernel struct: the probes that need one are unavailable,
    # oom_kill falls to oom:mark_victim, near_oom keeps a kprobe (it reads no struct there).
    "no-btf": {
        "memcg_oom": "unavailable",
        "oom_context": "unavailable",
        "oom_kill": "tracepoint",
        "near_oom": "kprobe",
        "charge_failure": "unavailable",
    },
}

# Rules fentry out for the kprobe variant, the way a kernel that refuses trampolines would;
# everything else is the real CLI.
_KPROBE_WRAPPER = (
    "import sys, tracer.kernel.features as p\n"
    "p._fentry_refusal = lambda btf: 'ruled out by the kernel matrix (kprobe-tier run)'\n"
    "from tracer.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def log(message: str) -> None:
    sys.stderr.write(f"guest: {message}\n")
    sys.stderr.flush()


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


# ---------------------------------------------------------------------------------------------
# Cgroup layouts


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def _unmount_all_below(top: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m == str(top) or m.startswith(str(top) + "/")), reverse=True):
        sh("umount", point)


def setup_layout(layout: str) -> None:
    """Mounts /sys/fs/cgroup as `layout`; the memory controller must be free to move."""
    _unmount_all_below(CGROUP)
    if layout == "v2":
        deadline = time.monotonic() + 60
        while True:
            sh("mount", "-t", "cgroup2", "none", str(CGROUP))
            if "memory" in (CGROUP / "cgroup.controllers").read_text().split():
                return
            # The v1 hierarchy of an earlier layout is still being torn down (dying memcgs
            # pinned by page cache): drop the cache and look again.
            sh("umount", str(CGROUP))
            if time.monotonic() > deadline:
                raise RuntimeError("the memory controller did not come back to cgroup v2")
            Path("/proc/sys/vm/drop_caches").write_text("3")
            time.sleep(1)
    sh("mount", "-t", "tmpfs", "cgroup", str(CGROUP))
    (CGROUP / "memory").mkdir()
    sh("mount", "-t", "cgroup", "-o", "memory", "memory", str(CGROUP / "memory"))
    hierarchy = CGROUP / "memory/memory.use_hierarchy"
    if hierarchy.exists() and hierarchy.read_text().strip() != "1":
        # Before 5.11 a v1 root starts flat; systemd and every kubelet node set this at boot,
        # and a pod-level limit means nothing without it.
        hierarchy.write_text("1")
    if layout == "hybrid":
        (CGROUP / "unified").mkdir()
        sh("mount", "-t", "cgroup2", "none", str(CGROUP / "unified"))


def teardown_layout(layout: str) -> None:
    if layout == "v2":
        return
    # Let go of the v1 memory hierarchy so a later layout can take the controller back:
    # cached pages keep removed memcgs (and with them the hierarchy) alive.
    Path("/proc/sys/vm/drop_caches").write_text("3")
    _unmount_all_below(CGROUP)


# ---------------------------------------------------------------------------------------------
# Staging: the VM reads the host's files over 9p, which under TCG costs minutes per bcc
# compile (clang opens a thousand headers, the dynamic linker faults in 200 MB of LLVM).
# The same files are copied into RAM once; nothing the tracer sees changes.

STAGE = Path("/run/oomtrace-vm")


def stage_header_tree(tar: str, tree: str) -> None:
    """Unpacks `tar` (the tree, symlinks followed) into RAM and binds it over `tree`, so
    every path to it, /lib/modules/<release>/build included, stays what it was."""
    into = STAGE / f"tree{len(list(STAGE.glob('tree*')))}"
    into.mkdir(parents=True)
    sh("tar", "-xf", tar, "-C", str(into))
    sh("mount", "--bind", str(into), tree)


def stage_libraries() -> str:
    """bcc's large shared libraries copied into RAM; returns an LD_LIBRARY_PATH for them."""
    into = STAGE / "lib"
    into.mkdir(parents=True, exist_ok=True)
    found = re.search(r"libbcc\.so\.0 \(libc6,x86-64\) => (\S+)", sh("ldconfig", "-p").stdout)
    if found is None:
        raise RuntimeError("libbcc.so.0 not found (python3-bpfcc installed?)")
    libbcc = found.group(1)
    deps = re.findall(r"^\s*(\S+) => (/\S+)", sh("ldd", libbcc).stdout, re.M)
    for name, path in [("libbcc.so.0", libbcc), *deps]:
        # LLVM and clang are what every compile faults in; ICU data and z3 are linked, barely read.
        if name.startswith(("libbcc", "libLLVM", "libclang")):
            shutil.copyfile(path, into / name)
    return str(into)


# ---------------------------------------------------------------------------------------------
# Tracer variants


class Tracer:
    """One `oomtrace run` variant; JSON lines from stdout and stderr collected by threads."""

    def __init__(self, variant: str, python: str, foreign_cache: str, lib_path: str) -> None:
        self.variant = variant
        self.events: list[dict[str, Any]] = []
        self.diagnostics: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._ready = threading.Event()
        self._lock = threading.Lock()
        # --near-oom-quiet 1: scenarios are seconds apart, and without BTF on v1 every cgroup
        # counts under one unknown id, so the default 10 s would swallow the next "first".
        args = [
            "run",
            "--metrics-address",
            "none",
            "--interval",
            "0.5",
            "--near-oom-quiet",
            "1",
            "--node-name",
            "vm",
        ]
        if variant == "kprobe":
            cmd = [python, "-c", _KPROBE_WRAPPER, *args]
        else:
            cmd = [python, "-m", "tracer", *args]
        if variant in ("foreign", "no-btf"):
            cmd += ["--headers-cache", foreign_cache]
            if variant == "no-btf":
                cmd.append("--no-btf")
            # A private mount namespace with an empty /lib/modules: no `build` link, as on a
            # node whose kernel ships no headers. Nothing else changes for the tracer.
            cmd = [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount -t tmpfs none /usr/lib/modules && exec "$@"', "sh", *cmd,
            ]  # fmt: skip
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", LD_LIBRARY_PATH=lib_path)
        env.pop("BCC_KERNEL_SOURCE", None)
        self.started = time.monotonic()
        self.ready_s: float | None = None
        self.process = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.raw_stderr.append("stdout: " + line)
                continue
            with self._lock:
                self.events.append(event)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw_stderr.append(line)
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            record["t_s"] = round(time.monotonic() - self.started, 1)
            self.diagnostics.append(record)
            if record.get("msg") == "tracing":
                self.ready_s = time.monotonic() - self.started
                self._ready.set()

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready.wait(0.5):
                return True
            if self.process.poll() is not None:
                time.sleep(0.5)  # let the reader threads take the last words
                return self._ready.is_set()
        return False

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def plan(self) -> dict[str, dict[str, Any]]:
        return {
            r["probe"]: {
                "tier": r["tier"],
                "target": r.get("target"),
                "why_not_better": r.get("why_not_better"),
            }
            for r in self.diagnostics
            if r.get("msg") == "probe"
        }

    def headers(self) -> str | None:
        for r in self.diagnostics:
            if r.get("msg") == "compiling BPF programs":
                return f"{r.get('origin')} ({r.get('headers')})"
        return None

    def warnings(self) -> list[str]:
        return [r["msg"] for r in self.diagnostics if r.get("level") in ("warning", "error")]

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


# ---------------------------------------------------------------------------------------------
# Scenarios


class KernelReport:
    """The kernel's OOM reports written to /dev/kmsg while a scenario runs."""

    def __init__(self) -> None:
        self._reader = KmsgReader()
        self._parser = OomReportParser()
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def collect(self) -> list[dict[str, Any]]:
        for _seq, ts_ns, message in self._reader.read_available():
            self.lines.append(f"[{ts_ns / 1e9:.6f}] {message}")
            self.events += self._parser.feed(message, ts_ns)
        return self.events

    def close(self) -> None:
        self._reader.close()


def calibrate() -> dict[str, int]:
    """printk clock minus CLOCK_MONOTONIC (ns), measured twice to see how stable it is."""
    first = printk_offset_ns()
    second = printk_offset_ns()
    return {"offset_ns": (first + second) // 2, "spread_ns": abs(first - second)}


def _oom(pod: PodSandbox, name: str) -> int:
    process = pod.spawn(name, total_mib=4 * pod.limit_bytes // MIB)
    code = process.wait(timeout=180)
    if code != -9:
        raise RuntimeError(f"allocator {name} exited {code}, not killed by the OOM killer")
    return process.pid


# Maps a file and touches every page: clean page cache charged to the container, which
# memcg reclaim can really free, so reclaimed_bytes is not zero. Stays idle until killed.
_CACHE_FILLER = r"""
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), min(int(sys.argv[2]), f.seek(0, 2)), prot=mmap.PROT_READ)
    sum(m[i] for i in range(0, len(m), 4096))
print("mapped", flush=True)
time.sleep(600)
"""


def _spawn_in(pod: PodSandbox, code: str, *args: str) -> "subprocess.Popen[bytes]":
    procs = [pod.dir(pod.container_path, root) / "cgroup.procs" for root in pod.roots]

    def enter() -> None:
        for path in procs:
            path.write_text(str(os.getpid()))

    return subprocess.Popen([sys.executable, "-c", code, *args], preexec_fn=enter, stdout=subprocess.PIPE)


def run_scenario(name: str, layout: str, cache_file: str | None = None) -> dict[str, Any]:
    """Makes one real OOM; returns what the kernel reported and which pids/cgroups it was about."""
    limit = 64 * MIB
    report = KernelReport()
    before = calibrate()
    holders: list[subprocess.Popen[bytes]] = []
    filler = None
    if name == "container_limit":
        pod = PodSandbox(limit_bytes=limit, driver="systemd")
    elif name == "pod_limit":
        pod = PodSandbox(limit_bytes=limit, limit_at="pod", driver="cgroupfs")
    elif name == "oom_group":
        pod = PodSandbox(limit_bytes=limit, driver="systemd")
    else:
        raise ValueError(name)
    pod.create()
    try:
        if name == "container_limit" and cache_file:
            filler = _spawn_in(pod, _CACHE_FILLER, cache_file, str(24 * MIB))
            assert filler.stdout is not None
            filler.stdout.readline()
        if name == "oom_group":
            (pod.dir(pod.container_path) / "memory.oom.group").write_text("1")
            for i in range(2):
                holder = pod.spawn(f"group-holder-{i}", total_mib=8, hold_s=600)
                assert holder.stdout is not None
                holder.stdout.readline()  # "allocated 8": the holder is charged and waiting
                holders.append(holder)
        started = time.monotonic()
        pid = _oom(pod, f"{name[:9]}-alloc")
        oom_s = time.monotonic() - started
        for holder in holders:
            code = holder.wait(timeout=60)
            if code != -9:
                raise RuntimeError(f"oom.group member {holder.pid} exited {code}, not killed with its group")
        after = calibrate()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kills = [e for e in report.collect() if e["event"] == "oom_kill"]
            if {e["victim_pid"] for e in kills} >= {pid, *(h.pid for h in holders)}:
                break
            time.sleep(0.2)
    finally:
        if filler is not None:
            filler.kill()
            filler.wait()
        pod.destroy()
        report.close()
    return {
        "scenario": name,
        "layout": layout,
        "limit_bytes": limit,
        "trigger_pid": pid,
        "victims": [pid, *(h.pid for h in holders)],
        "pod_uid": pod.pod_uid,
        "container_id": pod.container_id,
        "pod_path": pod.pod_path,
        "container_path": pod.container_path,
        "oom_memcg": pod.pod_path if name == "pod_limit" else pod.container_path,
        "oom_s": round(oom_s, 3),
        "cache_file": cache_file if filler is not None else None,
        "clock": {
            "before": before,
            "after": after,
            "offset_ns": (before["offset_ns"] + after["offset_ns"]) // 2,
        },
        "kernel_events": report.events,
        "kernel_log": report.lines,
    }


# ---------------------------------------------------------------------------------------------
# Checks


class Checker:
    def __init__(self, series: str, layout: str, variant: str, scenario: str) -> None:
        self.where = {"kernel": series, "cgroup": layout, "variant": variant, "scenario": scenario}
        self.checks: list[dict[str, Any]] = []

    def eq(self, field: str, expected: Any, actual: Any) -> bool:
        ok = bool(expected == actual)
        self.checks.append({**self.where, "field": field, "expected": expected, "actual": actual, "ok": ok})
        return ok

    def true(self, field: str, ok: bool, detail: Any) -> bool:
        self.checks.append({**self.where, "field": field, "expected": True, "actual": detail, "ok": bool(ok)})
        return bool(ok)


def _about(event: dict[str, Any], run: dict[str, Any]) -> bool:
    paths = {run["pod_path"], run["container_path"]}
    pids = set(run["victims"])
    return bool(
        {event.get("memcg"), event.get("oom_memcg"), event.get("task_memcg"), event.get("trigger_memcg")}
        & paths
        or {event.get("victim_pid"), event.get("trigger_pid"), event.get("trigger_tgid")} & pids
    )


def check_variant(
    series: str, run: dict[str, Any], variant: str, events: list[dict[str, Any]], facts: dict[str, Any]
) -> list[dict[str, Any]]:
    """Compares one variant's events for one scenario with the kernel's report."""
    layout, scenario = run["layout"], run["scenario"]
    c = Checker(series, layout, variant, scenario)
    btf = variant != "no-btf"
    ours = [e for e in events if _about(e, run)]
    kernel = run["kernel_events"]
    k_oom = next((e for e in kernel if e["event"] == "memcg_oom"), None)
    k_kills: dict[int, dict[str, Any]] = {}
    for e in kernel:
        if e["event"] == "oom_kill":
            k_kills.setdefault(e["victim_pid"], e)  # the first line of a victim carries the summary
    if k_oom is None or not c.true("kernel.report", run["trigger_pid"] in k_kills, "kernel report read"):
        if k_oom is None:
            c.true("kernel.report", False, "no memcg OOM report in /dev/kmsg")
        return c.checks

    # memcg_oom: one, before the kernel's report, with the OOMing cgroup's page counter.
    memcg_ooms = [e for e in ours if e["event"] == "memcg_oom"]
    c.eq("memcg_oom.count", 1 if btf else 0, len(memcg_ooms))
    if memcg_ooms:
        m = memcg_ooms[0]
        c.eq("memcg_oom.oom_memcg", run["oom_memcg"], m["oom_memcg"])
        c.eq("memcg_oom.oom_memcg(kernel)", k_oom["oom_memcg"], m["oom_memcg"])
        c.eq("memcg_oom.limit_bytes", run["limit_bytes"], m["limit_bytes"])
        c.eq("memcg_oom.limit_bytes(kernel)", k_oom["limit_bytes"], m["limit_bytes"])
        if m["order"] == 0:  # a charge of one page fails only when the counter is at its limit
            c.eq("memcg_oom.usage_bytes", m["limit_bytes"], m["usage_bytes"])
        # The kernel prints usage a little later, after drain_all_stock() has asynchronously
        # returned other CPUs' pre-charged stock (up to MEMCG_CHARGE_BATCH pages per CPU).
        stock = 64 * os.sysconf("SC_PAGE_SIZE") * (os.cpu_count() or 1)
        drained = m["usage_bytes"] - k_oom["usage_bytes"]
        c.true(
            "memcg_oom.usage_bytes(kernel)",
            0 <= drained <= stock,
            {"kernel": k_oom["usage_bytes"], "ours": m["usage_bytes"]},
        )
        c.eq("memcg_oom.gfp_mask", k_oom["gfp_mask"], m["gfp_mask"])
        c.eq("memcg_oom.order", k_oom["order"], m["order"])
        c.eq("memcg_oom.trigger_pid", k_oom["trigger_pid"], m["trigger_pid"])
        c.eq("memcg_oom.trigger_comm", k_oom["trigger_comm"], m["trigger_comm"])
        c.eq("memcg_oom.trigger_memcg", run["container_path"], m["trigger_memcg"])
        # The lead over the kernel log, on one clock: the printk stamp of "invoked
        # oom-killer" moved to CLOCK_MONOTONIC with the offset calibrated around the OOM.
        invoked_mono = k_oom["ktime_ns"] - run["clock"]["offset_ns"]
        lead_us = (invoked_mono - m["ktime_ns"]) / 1000
        c.true("memcg_oom.lead_us", lead_us > 0, round(lead_us, 1))

    # oom_kill: exactly one per victim, agreeing with the kernel's report.
    full_tracepoint = {"comm", "anon_rss", "uid"} <= set(facts["mark_victim_fields"])
    compared = KILLED_LINE_FIELDS if btf or full_tracepoint else ("victim_pid",)
    for victim in run["victims"]:
        kills = [e for e in ours if e["event"] == "oom_kill" and e["victim_pid"] == victim]
        if not c.eq(f"oom_kill[{victim}].count", 1, len(kills)):
            continue
        mine, theirs = kills[0], k_kills.get(victim)
        if theirs is None:
            c.true(f"oom_kill[{victim}].kernel_line", False, "the kernel log has no kill of this pid")
            continue
        # The Killed line's fields: the event must reproduce them exactly.
        for field in KILLED_LINE_FIELDS:
            # What the probe cannot see is null, never a guess.
            c.eq(f"oom_kill.{field}", theirs[field] if field in compared else None, mine[field])
        c.eq("oom_kill.oom_memcg", run["oom_memcg"] if btf else None, mine["oom_memcg"])
        c.eq("oom_kill.task_memcg", run["container_path"] if btf else None, mine["task_memcg"])
        c.eq("oom_kill.constraint", "memcg" if btf else None, mine["constraint"])
        if btf and theirs.get("oom_memcg") is not None:
            c.eq("oom_kill.oom_memcg(kernel)", theirs["oom_memcg"], mine["oom_memcg"])
            c.eq("oom_kill.task_memcg(kernel)", theirs["task_memcg"], mine["task_memcg"])
        c.eq("oom_kill.pod_uid", run["pod_uid"] if btf else None, mine["pod_uid"])
        c.eq("oom_kill.container_id", run["container_id"] if btf else None, mine["container_id"])

    # near_oom first, then memcg_oom, then oom_kill: in stream order and in kernel time.
    firsts = [e for e in ours if e["event"] == "near_oom" and e["phase"] == "first"]
    if c.eq("near_oom.first.count", 1, len(firsts)):
        first = firsts[0]
        # With BTF: the cgroup being reclaimed, the one over its limit. Without: the charging
        # task's v2 cgroup (bpf_get_current_cgroup_id()), which is its memory cgroup on v2 only.
        no_btf_memcg = run["container_path"] if layout == "v2" else None
        expect_memcg = run["oom_memcg"] if btf else no_btf_memcg
        c.eq("near_oom.memcg", expect_memcg, first["memcg"])
        c.eq("near_oom.limit_bytes", run["limit_bytes"] if btf else None, first["limit_bytes"])
        stream = [e for e in ours if e["event"] != "near_oom" or e["phase"] == "first"]
        order = list(dict.fromkeys(e["event"] for e in stream))
        c.eq("order", ["near_oom", "memcg_oom", "oom_kill"] if btf else ["near_oom", "oom_kill"], order)
        stamps = [e["ktime_ns"] for e in stream]
        c.true("order.ktime_ns", stamps == sorted(stamps), stamps)
    summaries = [e for e in ours if e["event"] == "near_oom" and e["phase"] == "summary"]
    if not btf and layout != "v2":
        # No memcg id at all on v1 without BTF: summaries count under "unknown" (memcg null).
        summaries = [
            e for e in events if e["event"] == "near_oom" and e["phase"] == "summary" and e["memcg"] is None
        ]
    c.true("near_oom.summary.reclaim_calls", any(s["reclaim_calls"] > 0 for s in summaries), len(summaries))
    c.true(
        "near_oom.summary.charge_failures",
        all((s["charge_failures"] is not None) == btf for s in summaries),
        [s["charge_failures"] for s in summaries],
    )
    return c.checks


def check_reclaim_agrees(series: str, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every probe of try_to_free_mem_cgroup_pages saw the same reclaims: calls and pages
    reclaimed (the fexit return value, the kretprobe's rax) add up alike in every variant
    that can name the cgroup."""
    c = Checker(series, run["layout"], "all", run["scenario"])
    totals = {}
    for variant, events in run["events"].items():
        if variant == "no-btf" and run["layout"] != "v2":
            continue  # no memcg id at all: everything counts under one unknown id
        summaries = [e for e in events if e["event"] == "near_oom" and e["phase"] == "summary"]
        totals[variant] = (
            sum(e["reclaim_calls"] for e in summaries),
            sum(e["reclaimed_bytes"] for e in summaries),
        )
    c.true("near_oom.summary.totals_agree", len(set(totals.values())) == 1, totals)
    if run.get("cache_file"):
        c.true("near_oom.summary.reclaimed_bytes", all(v[1] > 0 for v in totals.values()), totals)
    return c.checks


# ---------------------------------------------------------------------------------------------


def online_cpus() -> None:
    """Brings up the CPUs the VM was booted without (maxcpus=1, see matrix.py)."""
    for cpu in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")):
        online = cpu / "online"
        if online.exists() and online.read_text().strip() == "0":
            online.write_text("1")


def kernel_facts() -> dict[str, Any]:
    kallsyms = Path("/proc/kallsyms").read_text()
    functions = {}
    names = (
        "mem_cgroup_out_of_memory",
        "oom_kill_process",
        "__oom_kill_process",
        "try_to_free_mem_cgroup_pages",
        "try_charge_memcg",
        "try_charge",
        "mark_oom_victim",
    )
    for fn in names:
        functions[fn] = bool(re.search(rf" [tTwW] {re.escape(fn)}$", kallsyms, re.M))
    fmt = Path("/sys/kernel/tracing/events/oom/mark_victim/format")
    fields = re.findall(r"field:[^;]* (\w+);", fmt.read_text()) if fmt.exists() else []
    lockdown = Path("/sys/kernel/security/lockdown")
    return {
        "release": os.uname().release,
        "btf": Path("/sys/kernel/btf/vmlinux").exists(),
        "lockdown": lockdown.read_text().strip() if lockdown.exists() else None,
        "functions": functions,
        "mark_victim_fields": [f for f in fields if not f.startswith("common_")],
        "thp": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip(),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--results", required=True, type=Path)
    parser.add_argument("--foreign-cache", required=True, help="--headers-cache of the foreign-header runs")
    parser.add_argument(
        "--stage-tree", action="append", default=[], metavar="TAR:DIR",
        help="unpack TAR into RAM and bind it over DIR (header trees)",
    )  # fmt: skip
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--layouts", help="comma-separated subset of the series' layouts (debugging)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (debugging)")
    args = parser.parse_args()
    layouts = args.layouts.split(",") if args.layouts else LAYOUTS[args.series]
    started = time.monotonic()
    out = args.results / "results.json"
    results: dict[str, Any] = {"series": args.series, "done": False, "errors": [], "layouts": []}

    def save() -> None:
        results["duration_s"] = round(time.monotonic() - started, 1)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(out)

    try:
        if not (Path("/sys/kernel/tracing/events")).is_dir():
            sh("mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing")
        online_cpus()
        results["kernel"] = kernel_facts()
        results["kernel"]["cpus_online"] = Path("/sys/devices/system/cpu/online").read_text().strip()
        t = time.monotonic()
        results["stage_s"] = {}
        for spec in args.stage_tree:
            tar, tree = spec.split(":", 1)
            stage_header_tree(tar, tree)
            results["stage_s"][Path(tree).name] = round(time.monotonic() - t, 1)
        lib_path = stage_libraries()
        results["stage_s"]["libraries"] = round(time.monotonic() - t, 1)
        log(f"staged header trees and bcc's libraries in RAM in {results['stage_s']} s")
        save()
        for layout in layouts:
            entry: dict[str, Any] = {"cgroup": layout, "variants": {}, "scenarios": [], "checks": []}
            results["layouts"].append(entry)
            setup_layout(layout)
            log(f"{layout}: starting tracer variants {args.variants}")
            tracers = {
                v: Tracer(v, args.python, args.foreign_cache, lib_path) for v in args.variants.split(",")
            }
            for variant, tracer in tracers.items():
                ready = tracer.wait_ready(600)
                entry["variants"][variant] = {
                    "ready": ready,
                    "ready_s": round(tracer.ready_s, 1) if tracer.ready_s else None,
                    "plan": tracer.plan(),
                    "headers": tracer.headers(),
                    "warnings": tracer.warnings(),
                    "timeline": [
                        (r["t_s"], r.get("msg")) for r in tracer.diagnostics if r.get("msg") != "probe"
                    ],
                }
                c = Checker(args.series, layout, variant, "start")
                if not c.true("ready", ready, "".join(tracer.raw_stderr)[-3000:] if not ready else "tracing"):
                    entry["checks"] += c.checks
                    continue
                plan = tracer.plan()
                for probe, tier in EXPECTED_TIERS[variant].items():
                    c.eq(f"tier.{probe}", tier, plan.get(probe, {}).get("tier"))
                if variant == "no-btf":
                    c.true(
                        "says_no_btf",
                        any("disabled by --no-btf" in w for w in tracer.warnings()),
                        tracer.warnings(),
                    )
                c.true(
                    "headers",
                    (tracer.headers() or "").startswith(
                        "running kernel" if variant in ("fentry", "kprobe") else "foreign"
                    ),
                    tracer.headers(),
                )
                entry["checks"] += c.checks
                log(f"{layout}/{variant}: ready in {tracer.ready_s}s, headers {tracer.headers()}")
            save()
            scenarios = ["container_limit", "pod_limit"] + (["oom_group"] if layout == "v2" else [])
            # The OOMs and the clock calibration on one CPU: /dev/kmsg stamps records with the
            # printing CPU's local_clock(), which under TCG (TSC unstable) drifts per CPU by up
            # to milliseconds; CLOCK_MONOTONIC (bpf_ktime_get_ns) is global. The tracers,
            # started before, keep both CPUs.
            all_cpus = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(all_cpus)})
            for scenario in scenarios:
                log(f"{layout}/{scenario}: OOM")
                marks = {v: len(t.snapshot()) for v, t in tracers.items()}
                cache_file = args.stage_tree[0].split(":", 1)[0] if args.stage_tree else None
                try:
                    run = run_scenario(scenario, layout, cache_file)
                except Exception as err:  # a scenario that cannot run is a failure, not a skip
                    entry["checks"].append(
                        {
                            **Checker(args.series, layout, "-", scenario).where,
                            "field": "run",
                            "expected": "OOM",
                            "actual": repr(err),
                            "ok": False,
                        }
                    )
                    results["errors"].append(traceback.format_exc())
                    save()
                    continue
                time.sleep(2.5)  # near_oom summaries come on the 0.5 s interval
                run["events"] = {}
                for variant, tracer in tracers.items():
                    if not entry["variants"][variant]["ready"]:
                        continue
                    events = tracer.snapshot()[marks[variant] :]
                    run["events"][variant] = [e for e in events if _about(e, run)]
                    entry["checks"] += check_variant(args.series, run, variant, events, results["kernel"])
                entry["checks"] += check_reclaim_agrees(args.series, run)
                entry["scenarios"].append(run)
                bad = [x for x in entry["checks"] if not x["ok"] and x["scenario"] == scenario]
                log(f"{layout}/{scenario}: {len(bad)} failed checks")
                save()
            os.sched_setaffinity(0, all_cpus)
            for variant, tracer in tracers.items():
                code = tracer.stop()
                entry["variants"][variant]["exit"] = code
                entry["checks"].append(
                    {
                        **Checker(args.series, layout, variant, "stop").where,
                        "field": "exit",
                        "expected": 0,
                        "actual": code,
                        "ok": code == 0 or not entry["variants"][variant]["ready"],
                    }
                )
                if code != 0:
                    entry["variants"][variant]["stderr_tail"] = "".join(tracer.raw_stderr)[-3000:]
            teardown_layout(layout)
            save()
        results["done"] = True
    except Exception:
        results["errors"].append(traceback.format_exc())
        log(traceback.format_exc())
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
