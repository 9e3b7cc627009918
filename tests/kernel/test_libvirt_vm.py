"""A real VM OOM: libvirt starts a real QEMU (TCG) whose guest touches its RAM until the
kernel OOM-kills QEMU for its cgroup's limit — once as KubeVirt runs it (a libvirt daemon
inside a virt-launcher-shaped pod, the domain named `<namespace>_<vmi>`) and once on a plain
libvirt host (the host's libvirtd, the machine cgroup `/machine/qemu-<n>-<name>.libvirt-qemu`).

The guest memory in the event is parsed from the command line libvirt really generated; the
budget and the overhead advice are checked against the kernel's own report of the kill.
Domains are started paused, so oomtrace's /proc scan has read QEMU's command line before the
guest runs (as it would have long before a real VM's OOM).
"""

import json
import math
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel import runtimes
from tests.kernel.conftest import KernelLog, Tracer
from tests.kernel.runtimes import run
from tests.kernel.test_vm_attribution import _diagnostic
from tracer.cli.sandbox import PodSandbox

MIB = 1 << 20
GUEST_MIB = 256
GUEST = GUEST_MIB * MIB
# Too small an overhead: QEMU under TCG alone needs more than this beside the guest's RAM, so
# anonymous memory alone crosses the limit. Even so, a pod whose QEMU was the first to map its
# own files could livelock just under the limit (anon flat at 261 of 264 MiB, the kernel
# evicting and refaulting QEMU's text instead of OOM-killing): virt_files_cached prevents it.
OVERHEAD = 8 * MIB
LIMIT = GUEST + OVERHEAD


@pytest.fixture(scope="module", autouse=True)
def virt_files_cached() -> None:
    """QEMU's and libvirt's files in the page cache before any VM runs (see the function)."""
    assert runtimes.warm_virt_page_cache() > 0


@pytest.fixture(scope="module")
def boot_files() -> Iterator[tuple[Path, Path]]:
    # Not under pytest's tmp_path (mode 0700): the host's libvirtd runs QEMU as libvirt-qemu.
    directory = Path(tempfile.mkdtemp(prefix="oomtrace-guest-", dir="/tmp"))
    try:
        yield runtimes.guest_boot_files(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _tracer() -> Tracer:
    return Tracer("--interval", "0.5", "--vm-scan-interval", "0.5")


def _machine_diagnostic(tracer: Tracer, machine: str, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(tracer.stderr_lines):
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("msg") == "vm found" and record.get("machine") == machine:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no 'vm found' for machine {machine}:\n" + "".join(tracer.stderr_lines))


def _memcg_state(memcg: Path) -> str:
    """The limited cgroup's counters that tell a refault livelock from a guest that stopped."""
    files = ("memory.usage_in_bytes", "memory.failcnt") if (memcg / "memory.failcnt").exists() else ()
    counters = [f"{name}={(memcg / name).read_text().strip()}" for name in files]
    stat = dict(line.split() for line in (memcg / "memory.stat").read_text().splitlines())
    keys = ["rss", "cache", "pgmajfault", "workingset_refault_file"]
    keys = [f"total_{key}" for key in keys] if "total_rss" in stat else ["anon", "file", *keys[2:]]
    return " ".join(counters + [f"{key}={stat[key]}" for key in keys if key in stat])


def _wait_gone(pid: int, console: Path, memcg: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            seen = console.read_text(errors="replace")[-2000:] if console.exists() else "(no console)"
            raise AssertionError(
                f"QEMU {pid} was not OOM-killed within {timeout_s}s; {memcg}: {_memcg_state(memcg)}; "
                f"guest console:\n{seen}"
            )
        time.sleep(0.1)


def _check_budget(event: dict[str, Any], kernel: dict[str, Any], memcg: str) -> dict[str, Any]:
    """The overhead numbers against the kernel's report: QEMU's resident memory is the kernel's."""
    o = event["overhead"]
    assert (o["memcg"], o["limit_bytes"]) == (memcg, LIMIT)
    assert o["guest_memory_bytes"] == GUEST
    assert o["overhead_budget_bytes"] == OVERHEAD
    qemu_resident = kernel["anon_rss_bytes"] + kernel["shmem_rss_bytes"]
    assert o["guest_resident_bytes"] == min(GUEST, qemu_resident)
    assert o["usage_bytes"] is not None and o["usage_bytes"] <= LIMIT
    assert o["non_guest_usage_bytes"] == o["usage_bytes"] - o["guest_resident_bytes"]
    # What QEMU alone held beyond the guest's RAM, by the kernel's count, was already more than
    # the budget.
    assert qemu_resident - GUEST > 0 or o["non_guest_usage_bytes"] > OVERHEAD
    return o


def test_a_kubevirt_vm_in_a_pod_is_named_budgeted_and_advised_from_real_qemu(
    boot_files: tuple[Path, Path], kernel_log: KernelLog, tmp_path: Path
) -> None:
    kernel_image, initrd = boot_files
    domain = f"default_vm-{uuid.uuid4().hex[:6]}"  # KubeVirt's <namespace>_<vmi>
    vm = domain.replace("_", "/", 1)
    state = tmp_path / "libvirt"
    command, uri = runtimes.pod_libvirtd_command(state)
    with PodSandbox(limit_bytes=LIMIT, limit_at="pod") as sandbox:
        tracer = _tracer()
        try:
            libvirtd = sandbox.spawn("libvirtd", 0, command=command)
            runtimes.wait_for_libvirt(uri, libvirtd)
            xml = tmp_path / "domain.xml"
            console = tmp_path / "console"
            xml.write_text(runtimes.domain_xml(domain, GUEST_MIB, kernel_image, initrd, console))
            run("virsh", "-c", uri, "create", "--paused", str(xml))
            qemu = runtimes.qemu_pid_of(domain)
            assert sandbox.pod_path in Path(f"/proc/{qemu}/cgroup").read_text()  # QEMU is in the pod
            found = _diagnostic(tracer, "vm found", sandbox.pod_uid)
            run("virsh", "-c", uri, "resume", domain)
            _wait_gone(qemu, console, sandbox.dir(sandbox.pod_path))
            event = tracer.wait_for(
                lambda e: e["event"] == "oom_kill" and e["victim_pid"] == qemu, timeout_s=20
            )
            kernel = kernel_log.kill_of(qemu)
        finally:
            subprocess.run(["virsh", "-c", uri, "destroy", domain], capture_output=True, timeout=60)
            assert tracer.stop() == 0, "".join(tracer.stderr_lines)
            if libvirtd.poll() is None:
                libvirtd.terminate()
                libvirtd.wait(timeout=30)

    assert (found["vm"], found["pid"], found["guest_memory_bytes"]) == (vm, qemu, GUEST)
    assert (event["vm"], event["guest_memory_bytes"], event["vcpus"]) == (vm, GUEST, 1)
    assert event["pod_uid"] == sandbox.pod_uid and event["container_id"] == sandbox.container_id
    assert event["victim_comm"] == kernel["victim_comm"] == "qemu-system-x86"
    assert event["victim_role"] == "qemu"
    # The guest's vCPU thread (TCG here) touched the memory that pushed the pod over its limit.
    assert event["trigger_role"] in ("vcpu", "qemu"), event["trigger_comm"]
    assert event["anon_rss_bytes"] == kernel["anon_rss_bytes"]
    assert event["task_memcg"] == kernel["task_memcg"] == sandbox.container_path
    assert kernel["oom_memcg"] == sandbox.pod_path
    roles = {t["role"] for t in event["memory_snapshot"]["tasks"]}
    assert "libvirtd" in roles, event["memory_snapshot"]  # the pod's libvirt daemon, in its memory

    o = _check_budget(event, kernel, sandbox.pod_path)
    rec = o["recommendation"]
    assert rec is not None and rec["budget_sufficient"] is False
    assert rec["needed_budget_bytes"] == math.ceil(o["non_guest_usage_bytes"] * 1.1)
    assert rec["needed_budget_bytes"] > OVERHEAD


@pytest.fixture
def system_libvirt() -> Iterator[str]:
    with runtimes.system_libvirt() as uri:
        yield uri


def test_a_plain_libvirt_host_vm_is_named_by_its_domain_and_budgeted(
    boot_files: tuple[Path, Path], kernel_log: KernelLog, tmp_path: Path, system_libvirt: str
) -> None:
    kernel_image, initrd = boot_files
    domain = f"oomtrace-{uuid.uuid4().hex[:6]}"
    xml = tmp_path / "domain.xml"
    console = kernel_image.with_name(f"{domain}.console")
    xml.write_text(runtimes.domain_xml(domain, GUEST_MIB, kernel_image, initrd, console))
    tracer = _tracer()
    try:
        run("virsh", "-c", system_libvirt, "create", "--paused", str(xml))
        qemu = runtimes.qemu_pid_of(domain)
        memcg = next(
            line.split(":", 2)[2]
            for line in Path(f"/proc/{qemu}/cgroup").read_text().splitlines()
            if line.split(":")[1] in ("memory", "")
        )
        machine = memcg.split("/")[2].removesuffix(".libvirt-qemu")
        assert memcg == f"/machine/{machine}.libvirt-qemu" and machine.endswith(f"-{domain}")
        # The host's own limit on the machine (what <memtune> would set: libvirt's
        # hard_limit also raises RLIMIT_MEMLOCK, which root here may not), before it runs.
        limit_file = Path("/sys/fs/cgroup/memory") / memcg.lstrip("/") / "memory.limit_in_bytes"
        limit_file.write_text(str(LIMIT))
        found = _machine_diagnostic(tracer, machine)
        run("virsh", "-c", system_libvirt, "resume", domain)
        _wait_gone(qemu, console, limit_file.parent)
        event = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == qemu, timeout_s=20)
        kernel = kernel_log.kill_of(qemu)
    finally:
        subprocess.run(["virsh", "-c", system_libvirt, "destroy", domain], capture_output=True, timeout=60)
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)

    assert (found["vm"], found["pid"], found["guest_memory_bytes"]) == (domain, qemu, GUEST)
    assert (event["runtime"], event["machine"], event["pod_uid"]) == ("libvirt", machine, None)
    assert (event["vm"], event["guest_memory_bytes"], event["vcpus"]) == (domain, GUEST, 1)
    assert event["victim_role"] == "qemu" and event["victim_comm"] == kernel["victim_comm"]
    assert event["task_memcg"] == kernel["task_memcg"] == kernel["oom_memcg"] == memcg
    assert event["anon_rss_bytes"] == kernel["anon_rss_bytes"]
    o = _check_budget(event, kernel, memcg)
    # No KubeVirt formula and no Harvester setting to advise on a plain host.
    assert (o["kubevirt_version"], o["kubevirt_overhead_bytes"], o["recommendation"]) == (None, None, None)
