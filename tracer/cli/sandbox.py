"""Throwaway pod-shaped cgroups with real limits, for `oomtrace demo` and the kernel tests.

Safety rules, kept by construction: the memory limit is written before any process is
moved in, every allocator stops at a hard cap (1 GiB), and everything lives under a
parent of our own, never inside a live kubelet's kubepods tree (the kubelet would
garbage-collect it).
"""

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ALLOCATOR_CAP_MIB = 1024

# Runs inside the cgroup: names itself (comm), allocates and touches memory in 1 MiB
# steps up to a cap, optionally pausing between steps, then holds it until killed or
# told to exit.
ALLOCATOR = r"""
import ctypes, sys, time
name, total_mib, step_s, hold_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME: the comm the kernel reports
total_mib = min(total_mib, CAP_MIB)
held = []
for _ in range(total_mib):
    held.append(bytearray(b"x" * (1 << 20)))  # written, not just reserved: really charged
    if step_s:
        time.sleep(step_s)
print("allocated", total_mib, flush=True)
time.sleep(hold_s)
""".replace("CAP_MIB", str(ALLOCATOR_CAP_MIB))


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def remove_cgroup(path: Path) -> None:
    """Removes a test cgroup directory (no children left), killing what is still in it and
    retrying while its last tasks exit; an OOM-killed task can take a moment to leave."""
    for _attempt in range(50):
        if not path.exists():
            return
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            path.rmdir()
            return
        except (OSError, ValueError):
            time.sleep(0.05)
    raise OSError(f"cannot remove test cgroup {path}")


class PodSandbox:
    """A pod cgroup with one container cgroup, on every hierarchy this host mounts.

    driver "systemd": <parent>/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/
    cri-containerd-<id>.scope; driver "cgroupfs": <parent>/kubepods/<qos>/pod<uid>/<id>.
    """

    def __init__(
        self,
        limit_bytes: int,
        limit_at: str = "container",
        qos: str = "burstable",
        driver: str = "systemd",
        parent: str | None = None,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
    ) -> None:
        if limit_at not in ("container", "pod"):
            raise ValueError("limit_at is 'container' or 'pod'")
        self.limit_bytes = limit_bytes
        self.limit_at = limit_at
        self.qos = qos
        self.pod_uid = str(uuid.uuid4())
        self.container_id = secrets.token_hex(32)
        self.parent = parent or f"oomtrace-test-{secrets.token_hex(4)}"
        self.cgroup_root = cgroup_root
        if driver == "systemd":
            uid_ = self.pod_uid.replace("-", "_")
            qos_slice = "" if qos == "guaranteed" else f"kubepods-{qos}.slice/"
            pod = f"kubepods-{qos}-pod{uid_}.slice" if qos != "guaranteed" else f"kubepods-pod{uid_}.slice"
            self.pod_path = f"/{self.parent}/kubepods.slice/{qos_slice}{pod}"
            self.container_path = f"{self.pod_path}/cri-containerd-{self.container_id}.scope"
        else:
            qos_dir = "" if qos == "guaranteed" else f"{qos}/"
            self.pod_path = f"/{self.parent}/kubepods/{qos_dir}pod{self.pod_uid}"
            self.container_path = f"{self.pod_path}/{self.container_id}"
        v1_memory = cgroup_root / "memory"
        self.v1 = (v1_memory / "memory.limit_in_bytes").exists()
        # Hierarchies to create the path in: the memory one first (it is what the kernel's
        # memcg ids refer to), then the v2 one on hybrid hosts.
        if self.v1:
            self.roots = [v1_memory] + [p for p in (cgroup_root / "unified",) if p.is_dir()]
        else:
            self.roots = [cgroup_root]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def memory_root(self) -> Path:
        return self.roots[0]

    def dir(self, path: str, root: Path | None = None) -> Path:
        return (root or self.memory_root) / path.lstrip("/")

    def create(self) -> "PodSandbox":
        for root in self.roots:
            self.dir(self.container_path, root).mkdir(parents=True, exist_ok=False)
        if not self.v1:
            self._enable_memory_controller()
        target = self.dir(self.container_path if self.limit_at == "container" else self.pod_path)
        if self.v1:
            _write(target / "memory.limit_in_bytes", str(self.limit_bytes))
        else:
            _write(target / "memory.max", str(self.limit_bytes))
            if (target / "memory.swap.max").exists():  # no swap escape: the OOM must come
                _write(target / "memory.swap.max", "0")
        return self

    def _enable_memory_controller(self) -> None:
        """cgroup v2: memory must be enabled in each ancestor's subtree_control."""
        parts = Path(self.container_path.lstrip("/")).parts
        level = self.cgroup_root
        for part in parts:
            control = level / "cgroup.subtree_control"
            if "memory" not in control.read_text().split():
                _write(control, "+memory")
            level = level / part

    def spawn(
        self,
        name: str,
        total_mib: int,
        step_s: float = 0.0,
        hold_s: float = 30.0,
        command: list[str] | None = None,
    ) -> "subprocess.Popen[bytes]":
        """Starts the allocator in the container cgroup (moved in before it allocates).

        `command` runs instead of the allocator (e.g. a fake QEMU); it must cap its own memory.
        """
        procs = [self.dir(self.container_path, root) / "cgroup.procs" for root in self.roots]

        def enter() -> None:
            for path in procs:
                _write(path, str(os.getpid()))

        process = subprocess.Popen(
            command or [sys.executable, "-c", ALLOCATOR, name, str(total_mib), str(step_s), str(hold_s)],
            preexec_fn=enter,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for root in self.roots:
            path = self.dir(self.container_path, root)
            stop = root / self.parent
            while path != root and path.is_relative_to(stop):
                remove_cgroup(path)
                path = path.parent

    def __enter__(self) -> "PodSandbox":
        return self.create()

    def __exit__(self, *_exc: object) -> None:
        self.destroy()
