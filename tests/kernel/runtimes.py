"""The real runtimes the kernel tests run containers and VMs with (scripts/install-runtimes.sh).

Daemons are started here when they are not already running and stopped again by whoever
started them. There is no registry: images are built from a local root filesystem holding
one static allocator, which touches memory in 1 MiB steps up to a cap (1 GiB by default),
so a test's memory limit, never the host, is what it runs into.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ALLOCATOR_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Touches memory 1 MiB at a time up to argv[1] MiB (default and ceiling 1024), then waits. */
int main(int argc, char **argv) {
    long cap = argc > 1 ? atol(argv[1]) : 1024;
    if (cap <= 0 || cap > 1024) cap = 1024;
    for (long i = 0; i < cap; i++) {
        char *p = malloc(1 << 20);
        if (p == NULL) return 2;
        memset(p, 1, 1 << 20);
    }
    pause();
    return 0;
}
"""
IMAGE = "oomtrace-test/alloc:1"
DOCKER = "/usr/bin/docker"  # Debian's client for Debian's dockerd (a newer one may be on PATH)


def run(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def build_allocator(directory: Path) -> Path:
    source = directory / "alloc.c"
    source.write_text(ALLOCATOR_C)
    binary = directory / "alloc"
    run("gcc", "-static", "-O2", "-o", str(binary), str(source))
    return binary


def rootfs_tar(directory: Path) -> Path:
    """A root filesystem with /bin/alloc only, as a tar for `docker import` / `podman import`."""
    binary = build_allocator(directory)
    tar = directory / "rootfs.tar"
    with tarfile.open(tar, "w") as out:
        info = out.gettarinfo(str(binary), arcname="bin/alloc")
        info.mode = 0o755
        with binary.open("rb") as f:
            out.addfile(info, f)
    return tar


def _responds(*args: str) -> bool:
    try:
        return subprocess.run(args, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def accepts(socket_path: str) -> Callable[[], bool]:
    """A probe that a daemon listens on `socket_path`: a socket file alone is not enough, as a
    daemon that was killed leaves its socket behind."""

    def probe() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            try:
                client.connect(socket_path)
            except OSError:
                return False
            return True

    return probe


@contextlib.contextmanager
def daemon(
    name: str, command: list[str], probe: list[str] | Callable[[], bool], timeout_s: float = 60
) -> Iterator[None]:
    """`command` running until the block ends, unless `probe` already succeeds (then left alone)."""
    responds = probe if callable(probe) else lambda: _responds(*probe)
    if responds():
        yield
        return
    if shutil.which(command[0]) is None:
        raise AssertionError(f"{command[0]} is not installed: run scripts/install-runtimes.sh")
    log_path = Path(f"/tmp/oomtrace-test-{name}.log")
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not responds():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start; see {log_path}")
            time.sleep(0.3)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def containerd() -> contextlib.AbstractContextManager[None]:
    return daemon("containerd", ["containerd"], ["ctr", "version"])


def dockerd() -> contextlib.AbstractContextManager[None]:
    # No network: no bridge, no iptables rules on the host. Docker's containers run through the
    # containerd started above (its namespace "moby").
    return daemon(
        "dockerd",
        ["dockerd", "--containerd=/run/containerd/containerd.sock", "--iptables=false", "--bridge=none"],
        [DOCKER, "info"],
    )


def libvirtd() -> contextlib.AbstractContextManager[None]:
    return daemon("libvirtd", ["libvirtd"], ["virsh", "-c", "qemu:///system", "version"])


# --- libvirt and a real QEMU ---------------------------------------------------------------

# The guest's /init: touches its RAM 1 MiB at a time (to at most 1 GiB), then waits; it prints
# how far it got on the serial console.
GUEST_INIT_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    for (long i = 0; i < 1024; i++) {
        char *p = malloc(1 << 20);
        if (p == NULL) break;
        memset(p, 1, 1 << 20);
        if (i % 32 == 0) { printf("guest: %ld MiB touched\n", i); fflush(stdout); }
    }
    for (;;) pause();
}
"""
SYSTEM_LIBVIRT = "qemu:///system"


def guest_boot_files(directory: Path) -> tuple[Path, Path]:
    """(kernel, initramfs) of a guest whose init touches its memory. The kernel is Debian's 6.1
    image from the VM matrix's cache (tests/vm/kernels.py downloads it the first time)."""
    from tests.vm import kernels

    directory.chmod(0o755)  # QEMU runs as libvirt-qemu under the system daemon
    kernel = directory / "vmlinuz"
    shutil.copyfile(kernels.fetch("6.1").vmlinuz, kernel)
    init_dir = directory / "initramfs"
    init_dir.mkdir()
    (init_dir / "init.c").write_text(GUEST_INIT_C)
    run("gcc", "-static", "-O2", "-o", str(init_dir / "init"), str(init_dir / "init.c"))
    initrd = directory / "initrd.cpio"
    with initrd.open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], input=b"init\n", stdout=out, cwd=init_dir, check=True
        )
    for path in (kernel, initrd):
        path.chmod(0o644)
    return kernel, initrd


def domain_xml(name: str, memory_mib: int, kernel: Path, initrd: Path, console: Path) -> str:
    """A TCG guest that boots straight into the memory-touching init: no disk, no network."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 rdinit=/init panic=-1</cmdline></os>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <video><model type='none'/></video><memballoon model='none'/>
  </devices>
</domain>
"""


@contextlib.contextmanager
def system_libvirt() -> Iterator[str]:
    """The host's own libvirtd (and the virtlogd it logs QEMU's output through); yields its URI."""
    with (
        daemon("virtlogd", ["virtlogd"], accepts("/run/libvirt/virtlogd-sock")),
        daemon("libvirtd", ["libvirtd"], ["virsh", "-c", SYSTEM_LIBVIRT, "version"]),
    ):
        yield SYSTEM_LIBVIRT


# A libvirt daemon of a virt-launcher's kind: it runs inside the pod and leaves cgroups alone
# (KubeVirt's virtqemud has cgroup_controllers = [] too), so the QEMU it starts stays in the
# pod's cgroup. Its own mount namespace gives it private config, state and socket directories
# (bind mounts over /etc/libvirt, /run/libvirt, ...), beside the host's daemon.
POD_QEMU_CONF = """cgroup_controllers = [ ]
stdio_handler = "file"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
"""
_POD_LIBVIRT_DIRS = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)


def pod_libvirtd_command(state: Path) -> tuple[list[str], str]:
    """(command, URI) of a libvirtd for a pod, its directories under `state`."""
    shutil.copytree("/etc/libvirt", state / "etc/libvirt", symlinks=True)
    # No default network to autostart: this daemon has no network to give.
    for autostart in (state / "etc/libvirt/qemu/networks/autostart").glob("*"):
        autostart.unlink()
    (state / "etc/libvirt/qemu.conf").write_text(POD_QEMU_CONF)
    mounts = []
    for target in _POD_LIBVIRT_DIRS:
        source = state / target.lstrip("/")
        source.mkdir(parents=True, exist_ok=True)
        mounts.append(f"mkdir -p {target} && mount --bind {source} {target}")
    script = " && ".join([*mounts, f"exec libvirtd --pid-file {state}/libvirtd.pid"])
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return command, f"qemu:///system?socket={state}/run/libvirt/libvirt-sock"


# The programs a pod's libvirt daemon and QEMU map, and the directories their plug-ins load from.
_VIRT_PROGRAMS = ("/usr/bin/qemu-system-x86_64", "/usr/sbin/libvirtd")
_VIRT_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/x86_64-linux-gnu/libvirt")


def warm_virt_page_cache() -> int:
    """Reads QEMU's and libvirtd's executables and libraries into the page cache from the
    caller's cgroup; returns the bytes read.

    A page is charged to the memory cgroup that first faulted it in. If a pod's QEMU is the
    first to run these files, their pages belong to the pod, and at its limit with no swap
    cgroup v1 reclaim evicts QEMU's own text, QEMU refaults it, and the guest barely runs:
    the kernel keeps "making progress" and never OOM-kills (seen here: the pod's anon flat
    at 261 of 264 MiB, ~230,000 charge failures a second, for minutes). Pages charged here
    stay out of the pod's reclaim, as on a node where the image's files are already cached.
    """
    files: set[Path] = set()
    for program in _VIRT_PROGRAMS:
        files.add(Path(program))
        for line in run("ldd", program).splitlines():
            parts = line.split("=>")[-1].split()
            if parts and parts[0].startswith("/"):
                files.add(Path(parts[0]))
    for directory in _VIRT_PLUGIN_DIRS:
        files.update(path for path in Path(directory).rglob("*.so") if path.is_file())
    read = 0
    for path in sorted(files):
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                read += len(chunk)
    return read


def wait_for_libvirt(uri: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not _responds("virsh", "-c", uri, "version"):
        if process.poll() is not None:
            raise AssertionError(f"libvirtd for {uri} exited {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise AssertionError(f"libvirtd at {uri} did not answer within {timeout_s}s")
        time.sleep(0.3)


def qemu_pid_of(domain: str) -> int:
    """The pid of the QEMU running `domain` (libvirt starts it with -name guest=<domain>,...)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"qemu-system-x86_64") and any(
            a.startswith(f"guest={domain},".encode()) for a in argv
        ):
            return int(entry.name)
    raise AssertionError(f"no QEMU process runs domain {domain}")
