"""The roles of the tasks in a virt-launcher pod (`trigger_role` / `victim_role`), from their comm."""

from __future__ import annotations

import re
from typing import Final

# Roles of the tasks in a virt-launcher pod, as `trigger_role` / `victim_role` say them.
QEMU: Final = "qemu"
VCPU: Final = "vcpu"
VIRT_LAUNCHER: Final = "virt-launcher"
VIRT_LAUNCHER_MONITOR: Final = "virt-launcher-monitor"
VIRTQEMUD: Final = "virtqemud"
LIBVIRTD: Final = "libvirtd"
VIRTLOGD: Final = "virtlogd"
OTHER: Final = "other"

# The kernel keeps 15 characters of a task's name (TASK_COMM_LEN 16 with the NUL), so
# "virt-launcher-monitor" is "virt-launcher-m" and "qemu-system-x86_64" is "qemu-system-x86".
_COMM_ROLES: Final[dict[str, str]] = {
    "virt-launcher": VIRT_LAUNCHER,
    "virt-launcher-m": VIRT_LAUNCHER_MONITOR,
    "virt-launcher-monitor": VIRT_LAUNCHER_MONITOR,
    "virtqemud": VIRTQEMUD,
    "libvirtd": LIBVIRTD,
    "virtlogd": VIRTLOGD,
}
# vCPU threads when QEMU runs with debug-threads=on (KubeVirt and libvirt always set it):
# "CPU <n>/KVM" with KVM, "CPU <n>/TCG" under emulation (nested hosts, the tests here).
_VCPU_COMM: Final = re.compile(r"CPU [0-9]{1,5}/(?:KVM|TCG)")


def is_qemu_comm(comm: str | None) -> bool:
    """QEMU's main thread: `qemu-system-x86` (truncated from qemu-system-x86_64) or `qemu-kvm`."""
    return comm is not None and (comm == "qemu-kvm" or comm.startswith("qemu-system-"))


def role_of(comm: str | None, process_comm: str | None = None) -> str | None:
    """The role of a task from its own comm and, for threads, its process's comm.

    A QEMU thread that is not a vCPU (`IO iothread1`, `vnc_worker`, ...) is `qemu`, as is a
    virtqemud worker thread `virtqemud`. None when nothing is known about the task.
    """
    if comm is None and process_comm is None:
        return None
    for name in (comm, process_comm):
        if name is None:
            continue
        if _VCPU_COMM.fullmatch(name):
            return VCPU
        if is_qemu_comm(name):
            return QEMU
        role = _COMM_ROLES.get(name)
        if role is not None:
            return role
    return OTHER


