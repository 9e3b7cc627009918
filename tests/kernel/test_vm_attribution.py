"""A VM's OOM in a fake virt-launcher pod: named, attributed by role, and budgeted.

The pod cgroup holds processes named like KubeVirt's (virt-launcher-monitor, virt-launcher,
virtqemud, virtlogd) and a "QEMU": a capped Python allocator whose command line is a real
KubeVirt one in the parts oomtrace reads (`-name guest=default_vm2,debug-threads=on
-m size=1994752k -smp 2`, argv[0] /usr/bin/qemu-system-x86_64, comm qemu-system-x86). It
holds memory as a guest would, then a thread named `CPU 0/KVM` allocates into the pod's
limit and the kernel OOM-kills QEMU. The guest memory in the event is what the command line
says (1948 MiB), not what the fake allocates: the pod's limit stays at 192 MiB.

Pod names come from --kube apiserver against tests/fake_kube.py, a local server speaking the
Kubernetes API's PodList and watch shapes (no API server can run here).
"""

import json
import math
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.fake_kube import kubeconfig, pod, running
from tests.kernel.conftest import KernelLog, Tracer
from tracer.cli.sandbox import PodSandbox
from tracer.enrich import overhead

MIB = 1 << 20
LIMIT = 192 * MIB
GUEST = 2042626048  # size=1994752k

# The fake QEMU: names itself, holds "guest" memory, waits for SIGUSR1, then a thread named
# like a vCPU allocates in 1 MiB steps (capped at 512 MiB, far above the limit) until killed.
FAKE_QEMU = r"""
import ctypes, signal, sys, threading, time
libc = ctypes.CDLL(None)
libc.prctl(15, b"qemu-system-x86", 0, 0, 0)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
guest = [bytearray(b"g" * (1 << 20)) for _ in range(100)]
print("holding", flush=True)
signal.sigwait({signal.SIGUSR1})
def vcpu():
    libc.prctl(15, b"CPU 0/KVM", 0, 0, 0)
    more = []
    for _ in range(512):
        more.append(bytearray(b"v" * (1 << 20)))
threading.Thread(target=vcpu).start()
time.sleep(60)
"""
QEMU_ARGS = ["-name", "guest=default_vm2,debug-threads=on", "-m", "size=1994752k", "-smp", "2"]
COMPANIONS = ("virt-launcher-monitor", "virt-launcher", "virtqemud", "virtlogd")


def _fake_qemu_command() -> list[str]:
    # exec -a: argv[0] as virtqemud would start QEMU on Harvester.
    return [
        "bash", "-c", 'exec -a /usr/bin/qemu-system-x86_64 "$0" "$@"',
        sys.executable, "-c", FAKE_QEMU, *QEMU_ARGS,
    ]  # fmt: skip


def _diagnostic(tracer: Tracer, msg: str, pod_uid: str, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(tracer.stderr_lines):
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("msg") == msg and record.get("pod_uid") == pod_uid:
                    return record
        time.sleep(0.05)
    raise AssertionError(f"no {msg!r} diagnostic for pod {pod_uid}:\n" + "".join(tracer.stderr_lines))


def _metric(port: int, name: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_oom_of_a_vm_names_pod_and_vm_classifies_roles_and_recommends_an_overhead(
    tmp_path: Path, kernel_log: KernelLog
) -> None:
    with running() as api, PodSandbox(limit_bytes=LIMIT, limit_at="pod") as sandbox:
        api.add(
            pod(
                sandbox.pod_uid,
                "virt-launcher-vm2-x7k2p",
                node="node-1",
                containers={"compute": sandbox.container_id},
                labels={"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": "vm2", "team": "x"},
                annotations={"kubevirt.io/domain": "vm2", "secret-ish": "not copied"},
                owner=("VirtualMachineInstance", "vm2"),
            )
        )
        config = kubeconfig(tmp_path / "kubeconfig", api.url, api.token)
        tracer = Tracer(
            "--interval", "0.5", "--node-name", "node-1", "--vm-scan-interval", "0.5",
            "--kube", "apiserver", "--kubeconfig", str(config), "--kube-events",
        )  # fmt: skip
        try:
            for name in COMPANIONS:
                sandbox.spawn(name, total_mib=1, hold_s=60)
            qemu = sandbox.spawn("qemu", 0, command=_fake_qemu_command())
            assert qemu.stdout is not None
            assert qemu.stdout.readline() == b"holding\n"
            found = _diagnostic(tracer, "vm found", sandbox.pod_uid)
            qemu.send_signal(signal.SIGUSR1)  # the vCPU starts touching memory
            assert qemu.wait(timeout=60) == -9, "QEMU was not OOM-killed"
            event = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == qemu.pid)
            kernels = kernel_log.kill_of(qemu.pid)
            kills = _metric(tracer.metrics_port, "oomtrace_oom_kills_total")
            created = 'oomtrace_kube_events_total{reason="OOMKilled",result="created"} 2.0'
            deadline = time.monotonic() + 10
            while created not in (posted := _metric(tracer.metrics_port, "oomtrace_kube_events_total")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            pod_events = api.events_about("Pod", "virt-launcher-vm2-x7k2p")
            vmi_events = api.events_about("VirtualMachineInstance", "vm2")
        finally:
            assert tracer.stop() == 0, "".join(tracer.stderr_lines)

    # The VM, from QEMU's command line, read while it ran (it is dead when the kill is reported).
    assert found["vm"] == "default/vm2" and found["pid"] == qemu.pid
    assert event["vm"] == "default/vm2"
    assert event["guest_memory_bytes"] == GUEST
    assert event["vcpus"] == 2
    text = json.dumps(event)
    assert "debug-threads" not in text and "1994752k" not in text, "the command line leaked into the event"

    # The pod, from the (fake) API server.
    assert (event["namespace"], event["pod"], event["container"]) == (
        "default",
        "virt-launcher-vm2-x7k2p",
        "compute",
    )
    assert event["owner"] == {"kind": "VirtualMachineInstance", "name": "vm2"}
    assert event["labels"] == {"vm.kubevirt.io/name": "vm2"}
    assert event["annotations"] == {"kubevirt.io/domain": "vm2"}
    # (Other OOMs on this machine while the test ran have other labels.)
    assert (
        'oomtrace_oom_kills_total{container="compute",namespace="default",pod="virt-launcher-vm2-x7k2p",'
        'vm="default/vm2"} 1.0'
    ) in kills

    # Roles: the vCPU thread triggered it, QEMU was killed; the kernel's report agrees.
    assert event["trigger_comm"] == "CPU 0/KVM" and event["trigger_role"] == "vcpu"
    assert event["trigger_tgid"] == qemu.pid
    assert event["victim_comm"] == "qemu-system-x86" and event["victim_role"] == "qemu"
    assert kernels["victim_comm"] == "qemu-system-x86"
    assert kernels["trigger_comm"] == "CPU 0/KVM"

    # What was using the memory: the pod (the cgroup with the limit), read after the kill.
    snap = event["memory_snapshot"]
    assert snap["memcg"] == sandbox.pod_path and snap["limit_bytes"] == LIMIT
    assert snap["source_event"] == "oom_kill" and 0 <= snap["delay_ms"] < 5000
    assert snap["stat"]["anon_bytes"] is not None and snap["stat"]["file_bytes"] is not None
    roles = {t["role"] for t in snap["tasks"]}
    assert {"virt-launcher-monitor", "virt-launcher", "virtqemud", "virtlogd"} <= roles
    assert all(t["rss_bytes"] > 0 for t in snap["tasks"])

    # Overhead: consistent with the limit, the guest size and the kernel's own victim numbers.
    o = event["overhead"]
    assert o["memcg"] == sandbox.pod_path
    assert o["limit_bytes"] == LIMIT
    assert o["guest_memory_bytes"] == GUEST
    assert o["overhead_budget_bytes"] == LIMIT - GUEST  # negative: this limit was not set by KubeVirt
    assert o["usage_source"] == "peak" and LIMIT - 4 * MIB <= o["usage_bytes"] <= LIMIT
    qemu_resident = kernels["anon_rss_bytes"] + kernels["shmem_rss_bytes"]
    assert o["guest_resident_bytes"] == min(GUEST, qemu_resident)
    assert o["non_guest_usage_bytes"] == o["usage_bytes"] - o["guest_resident_bytes"]
    assert o["non_guest_usage_bytes"] > 4 * 5 * MIB  # at least the four companions' memory
    assert o["kubevirt_version"] == "1.3"
    base = overhead.kubevirt_overhead(GUEST, 2, (1, 3), video=False)
    assert o["kubevirt_overhead_bytes"] == base
    rec = o["recommendation"]
    assert rec["needed_budget_bytes"] == math.ceil(o["non_guest_usage_bytes"] * 1.1)
    assert rec["budget_sufficient"] is False  # a budget below zero never is
    assert base + rec["reserved_memory_bytes"] >= rec["needed_budget_bytes"]
    assert rec["reserved_memory"] == f"{rec['reserved_memory_bytes'] // MIB}Mi"
    assert base * float(rec["additional_guest_memory_overhead_ratio"]) >= rec["needed_budget_bytes"]
    assert "reservedMemory" in rec["text"]
    assert "not set by that formula" in rec["text"]  # 192 MiB is less than KubeVirt's overhead alone

    # The Kubernetes Events (--kube-events), posted to the API server stand-in: one on the pod,
    # one on its VirtualMachineInstance, saying what the kernel log cannot.
    assert len(pod_events) == len(vmi_events) == 1, (api.events, posted)
    pod_event, vmi_event = pod_events[0], vmi_events[0]
    assert pod_event["regarding"]["uid"] == sandbox.pod_uid
    assert vmi_event["regarding"]["apiVersion"] == "kubevirt.io/v1"
    for e in (pod_event, vmi_event):
        assert (e["reason"], e["type"], e["reportingController"], e["reportingInstance"]) == (
            "OOMKilled", "Warning", "oomtrace", "node-1",
        )  # fmt: skip
        assert e["note"].startswith(f"OOM-killed qemu-system-x86 (pid {qemu.pid}, ")
        assert f"VM default/vm2: guest {GUEST // MIB} MiB" in e["note"]
        assert f"harvesterhci.io/reservedMemory: {rec['reserved_memory']}" in e["note"]
    assert created in posted  # counted once the API server answered each
