"""Fixture trees for /proc and a memory cgroup hierarchy (v1 or v2), for tests without root.

Files are written in the kernel's formats: /proc/<pid>/{comm,cmdline,cgroup,status},
cgroup.procs, memory.stat and the limit/usage/peak files of each cgroup version.
"""

from __future__ import annotations

from pathlib import Path

KUBEVIRT_CMDLINE = [
    "/usr/bin/qemu-system-x86_64",
    "-name", "guest=default_vm2,debug-threads=on",
    "-S",
    "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw",'
    '"file":"/var/run/kubevirt-private/libvirt/qemu/lib/domain-1-default_vm2/master-key.aes"}',
    "-machine", "pc-q35-rhel8.2.0,usb=off,dump-guest-core=off,memory-backend=pc.ram",
    "-accel", "kvm",
    "-cpu", "host,migratable=on",
    "-m", "size=1994752k",
    "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":2042626048}',
    "-overcommit", "mem-lock=off",
    "-smp", "2,sockets=1,dies=1,cores=2,threads=1",
    "-object", '{"qom-type":"iothread","id":"iothread1"}',
    "-device", '{"driver":"VGA","id":"video0","vgamem_mb":16,"bus":"pcie.0","addr":"0x1"}',
    "-vnc", "vnc=unix:/var/run/kubevirt-private/2ce151aa/virt-vnc,audiodev=audio1",
]  # fmt: skip


def argv(*args: str) -> bytes:
    """An argv as /proc/<pid>/cmdline holds it: NUL after every argument."""
    return b"".join(a.encode() + b"\0" for a in args)


class FakeNode:
    def __init__(self, root: Path, v2: bool = False) -> None:
        self.proc = root / "proc"
        self.proc.mkdir(parents=True)
        self.v2 = v2
        self.cgroup_root = root / "cgroup"
        self.memory_root = self.cgroup_root if v2 else self.cgroup_root / "memory"
        self.memory_root.mkdir(parents=True)
        if v2:
            (self.cgroup_root / "cgroup.controllers").write_text("cpu io memory pids\n")
        else:
            (self.memory_root / "memory.limit_in_bytes").write_text("9223372036854771712\n")

    def cgroup(
        self,
        path: str,
        limit: int | None = None,
        usage: int | None = None,
        peak: int | None = None,
        stat: dict[str, int] | None = None,
        kmem: int | None = None,
    ) -> Path:
        directory = self.memory_root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").touch()
        if self.v2:
            (directory / "memory.max").write_text(f"{limit}\n" if limit is not None else "max\n")
            if usage is not None:
                (directory / "memory.current").write_text(f"{usage}\n")
            if peak is not None:
                (directory / "memory.peak").write_text(f"{peak}\n")
        else:
            unlimited = 9223372036854771712
            (directory / "memory.limit_in_bytes").write_text(f"{limit if limit is not None else unlimited}\n")
            if usage is not None:
                (directory / "memory.usage_in_bytes").write_text(f"{usage}\n")
            if peak is not None:
                (directory / "memory.max_usage_in_bytes").write_text(f"{peak}\n")
            if kmem is not None:
                (directory / "memory.kmem.usage_in_bytes").write_text(f"{kmem}\n")
        if stat is not None:
            (directory / "memory.stat").write_text("".join(f"{k} {v}\n" for k, v in stat.items()))
        return directory

    def process(
        self,
        pid: int,
        comm: str,
        cgroup: str,
        cmdline: bytes | None = None,
        rss_kib: tuple[int, int, int] | None = (1024, 512, 0),
    ) -> None:
        """A process in `cgroup` (which must exist). rss_kib = (anon, file, shmem); None: a kernel thread."""
        directory = self.proc / str(pid)
        directory.mkdir()
        (directory / "comm").write_text(comm + "\n")
        (directory / "cmdline").write_bytes(cmdline if cmdline is not None else argv(comm))
        line = f"0::{cgroup}\n" if self.v2 else f"12:memory:{cgroup}\n4:pids:{cgroup}\n"
        (directory / "cgroup").write_text(line)
        status = f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\n"
        if rss_kib is not None:
            anon, file, shmem = rss_kib
            status += (
                f"VmPeak:\t  {anon + file + shmem + 999} kB\nVmRSS:\t  {anon + file + shmem} kB\n"
                f"RssAnon:\t  {anon} kB\nRssFile:\t  {file} kB\nRssShmem:\t  {shmem} kB\n"
            )
        status += "Threads:\t1\n"
        (directory / "status").write_text(status)
        procs = self.memory_root / cgroup.lstrip("/") / "cgroup.procs"
        procs.write_text(procs.read_text() + f"{pid}\n")

    def exit(self, pid: int) -> None:
        """The process is gone: its /proc entry disappears (cgroup.procs is left as it was)."""
        for child in (self.proc / str(pid)).iterdir():
            child.unlink()
        (self.proc / str(pid)).rmdir()
