"""containerd's RuntimeDefault seccomp profile, rebuilt with libseccomp for a capability set.

schemas/containerd-seccomp-default.json is containerd's contrib/seccomp/seccomp_default.go
as data (amd64): the syscalls every container may make, those each capability in the
bounding set adds (CAP_BPF: bpf, CAP_PERFMON: perf_event_open, CAP_DAC_READ_SEARCH:
open_by_handle_at, ...), socket(2) for every address family but AF_ALG and AF_VSOCK, and
the clone/clone3 rules for containers without CAP_SYS_ADMIN.
Anything else fails with EPERM, as under containerd.
"""

import errno
import json
from pathlib import Path
from typing import Any

PROFILE = Path(__file__).with_name("schemas") / "containerd-seccomp-default.json"
_CLONE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


def profile() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PROFILE.read_text())
    return data


def allowed_syscalls(capabilities: list[str]) -> set[str]:
    """Names allowed without argument checks, for these capabilities (as in the manifest: "BPF")."""
    p = profile()
    names = set(p["allow"]) | set(p["allow_kernel_4_8"]) | set(p["allow_amd64"])
    for cap in capabilities:
        names |= set(p["allow_by_capability"].get(f"CAP_{cap}", []))
    return names


def build_filter(capabilities: list[str]) -> Any:
    """A libseccomp filter (Debian's python3-seccomp), not yet loaded."""
    import seccomp  # python3-seccomp: only the kernel tests need it

    p = profile()
    admin = "SYS_ADMIN" in capabilities
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in sorted(allowed_syscalls(capabilities)):
        if name in ("clone", "clone3") and not admin:
            continue  # below, with containerd's conditions
        try:
            f.add_rule(seccomp.ALLOW, name)
        except RuntimeError:
            continue  # a name libseccomp does not know on this architecture
    alg, vsock = p["allow_socket_families_except"]["AF_ALG"], p["allow_socket_families_except"]["AF_VSOCK"]
    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.LT, alg))
    for family in range(alg + 1, vsock):
        f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.GT, vsock))
    for value in p["allow_personality"]:
        f.add_rule(seccomp.ALLOW, "personality", seccomp.Arg(0, seccomp.EQ, value))
    if not admin:
        mask = 0
        for flag in p["without_sys_admin"]["clone_flags_forbidden"]:
            mask |= _CLONE_FLAGS[flag]
        f.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, mask, 0))
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return f
