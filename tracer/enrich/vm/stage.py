"""The VM enrichment stage: vm, guest memory, vCPUs and task roles on events of VM pods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.enrich.vm.locator import VmLocator
from tracer.enrich.vm.procfs import read_comm, vm_key
from tracer.enrich.vm.roles import OTHER, QEMU, role_of


@dataclass(frozen=True)
class PodHint:
    """What the Kubernetes metadata says about a pod's VM (labels/annotations), if anything."""

    virt_launcher: bool
    vm: str | None  # "<namespace>/<vmi>" from the kubevirt.io/domain annotation


class VmStage:
    """Adds vm, guest_memory_bytes, vcpus, trigger_role and victim_role to events of VMs.

    A pod is a VM pod if its QEMU process was found, or if its labels say virt-launcher
    (`pod_hint`, from the Kubernetes metadata when that is on). A hypervisor's machine on the
    host (libvirt, Proxmox: the `machine` tag) is a VM when its QEMU process is found; its `vm`
    is QEMU's guest name (the domain name). Other events are untouched.
    """

    def __init__(
        self,
        locator: VmLocator,
        proc_root: Path = Path("/proc"),
        pod_hint: Callable[[str], PodHint | None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._locator = locator
        self._proc = proc_root
        self._pod_hint = pod_hint
        self._on_error = on_error

    def start(self) -> None:
        """Starts the locator's background scan of /proc for new QEMU processes."""
        self._locator.start()

    def close(self) -> None:
        self._locator.close()

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self._locator.note_event()
        try:
            self._attribute(event)
        except Exception as err:  # attribution must never stop the event
            if self._on_error is not None:
                self._on_error(f"vm attribution failed: {err}")
        return event

    def _attribute(self, event: dict[str, Any]) -> None:
        key = vm_key(event)
        if key is None:
            return
        pod_uid = event.get("pod_uid")
        info = self._locator.for_vm(key, event.get("cgroup"))
        hint = self._pod_hint(pod_uid) if self._pod_hint is not None and pod_uid is not None else None
        comms = (event.get("trigger_comm"), event.get("victim_comm"))
        kubevirt_task = any(role_of(c) not in (None, OTHER) for c in comms)
        if info is None and not (hint is not None and hint.virt_launcher) and not kubevirt_task:
            return
        if info is not None:
            event["vm"] = info.vm if pod_uid is not None else info.guest_name
            event["guest_memory_bytes"] = info.guest_memory_bytes
            event["vcpus"] = info.vcpus
        if event.get("vm") is None and hint is not None:
            event["vm"] = hint.vm
        qemu_pid = info.pid if info is not None else None
        if event.get("trigger_comm") is not None:
            event["trigger_role"] = self._role(event["trigger_comm"], event.get("trigger_tgid"), qemu_pid)
        if event.get("event") == "oom_kill" and event.get("victim_comm") is not None:
            event["victim_role"] = self._role(event["victim_comm"], event.get("victim_tgid"), qemu_pid)

    def _role(self, comm: str, tgid: int | None, qemu_pid: int | None) -> str | None:
        own = role_of(comm)
        if own != OTHER or tgid is None:
            return own
        # A thread with a name of its own: its process says what it is part of.
        if tgid == qemu_pid:
            return QEMU
        return role_of(comm, read_comm(self._proc, tgid))
