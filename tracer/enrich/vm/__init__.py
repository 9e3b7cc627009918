"""VM attribution without the KubeVirt API: QEMU's command line, task roles, a per-pod cache.

A KubeVirt VM runs as one virt-launcher pod whose compute container holds
virt-launcher-monitor, virt-launcher, virtqemud (libvirtd before KubeVirt 0.59), virtlogd
and QEMU. QEMU's command line says which VM it is and how big:

    -name guest=<namespace>_<vmi>,debug-threads=on
    -m <MiB> | -m size=<KiB>k | -object {"qom-type":"memory-backend-ram","id":"pc.ram","size":<bytes>}
    -smp <n>[,sockets=..,cores=..,threads=..]

Only what is parsed out of it (vm, guest memory, vCPUs, a few device flags the overhead
formula needs) is kept: the command line itself, like the environment, can carry secrets
and never goes into an event or a log.

Command lines are read once per QEMU process, by a background scan of /proc that reads
the comm of new processes only, and on an event for a pod not seen yet (one scan of that
pod's cgroup). The OOM killer usually kills QEMU itself, after which /proc/<pid>/cmdline
is empty: what was learnt while it ran is what names the kill.
"""


from tracer.enrich.vm.locator import MAX_PODS, POD_RESCAN_S, YOUNG_S, FoundVm, VmLocator
from tracer.enrich.vm.procfs import pids_in, read_comm, vm_cgroup, vm_key
from tracer.enrich.vm.qemu import (
    MAX_CMDLINE_BYTES,
    MAX_GUEST_MEMORY_BYTES,
    MAX_VCPUS,
    QemuInfo,
    parse_qemu_cmdline,
    parse_size,
    split_opts,
)
from tracer.enrich.vm.roles import (
    LIBVIRTD,
    OTHER,
    QEMU,
    VCPU,
    VIRT_LAUNCHER,
    VIRT_LAUNCHER_MONITOR,
    VIRTLOGD,
    VIRTQEMUD,
    is_qemu_comm,
    role_of,
)
from tracer.enrich.vm.stage import PodHint, VmStage

__all__ = [
    "LIBVIRTD", "MAX_CMDLINE_BYTES", "MAX_GUEST_MEMORY_BYTES", "MAX_PODS", "MAX_VCPUS", "OTHER",
    "POD_RESCAN_S", "QEMU", "VCPU", "VIRTLOGD", "VIRTQEMUD", "VIRT_LAUNCHER", "VIRT_LAUNCHER_MONITOR",
    "YOUNG_S", "FoundVm", "PodHint", "QemuInfo", "VmLocator", "VmStage", "is_qemu_comm", "parse_qemu_cmdline",
    "parse_size", "pids_in", "read_comm", "role_of", "split_opts", "vm_cgroup", "vm_key",
]  # fmt: skip
