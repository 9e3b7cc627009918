"""Can this kernel load an fentry program? Asked with a no-op program that is loaded and
closed at once, never attached.

Some kernels have BTF and trampolines yet refuse fentry (seen: a 6.18 VM answering EPERM
before the verifier runs), so the only honest test is a load.
"""

import contextlib
import ctypes
import os
import platform
import resource
import struct

_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_FENTRY = 24
_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}
# r0 = 0; exit
_NOOP = bytes.fromhex("b7000000000000009500000000000000")


def lift_memlock_limit() -> None:
    """Before 5.11 (commit 3ac1f01b43b6) BPF programs and maps are charged to RLIMIT_MEMLOCK,
    checked against all the memory the user has locked: on a node where other root BPF tools
    hold maps, a no-op program is refused with EPERM at the default limit. bcc lifts it too,
    but only on its own loads, after this check has run."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: as far as the hard limit goes
        with contextlib.suppress(ValueError, OSError):
            hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def try_load_fentry(btf_func_id: int) -> str | None:
    """None if a no-op fentry program on the kernel function with this BTF id loads;
    otherwise the kernel's answer as a short reason."""
    nr = _SYSCALL_BPF.get(platform.machine())
    if nr is None:
        return f"no bpf() syscall number known for {platform.machine()}"
    lift_memlock_limit()
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(_NOOP)
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    # union bpf_attr, BPF_PROG_LOAD part (include/uapi/linux/bpf.h)
    struct.pack_into(
        "<IIQQ", attr, 0, _BPF_PROG_TYPE_TRACING, 2, ctypes.addressof(insns), ctypes.addressof(license_)
    )
    struct.pack_into("<I", attr, 68, _BPF_TRACE_FENTRY)  # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_func_id)  # attach_btf_id
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd = libc.syscall(nr, _BPF_PROG_LOAD, buf, len(attr))
    if fd >= 0:
        os.close(fd)
        return None
    errno = ctypes.get_errno()
    return f"kernel refused to load an fentry program: {os.strerror(errno)}"
