"""Gives back the memory that compiling the BPF programs took, once they are loaded.

bcc compiles in-process with clang/LLVM, and parsing the kernel's BTF builds ~70 MiB of Python
objects. Both are done before the first event, yet a process keeps what it touched: glibc holds
freed heap until asked (malloc_trim), and the ~80 MiB of libLLVM/libclang pages the compiler ran
stay resident. Neither is needed again unless a probe is reloaded, and then the kernel simply
reads the pages back from the library files. Measured here: 220 MiB at ready → 65 MiB.
"""

import ctypes
import ctypes.util
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# MADV_PAGEOUT (Linux 5.4): reclaim these pages now. Unlike MADV_DONTNEED it never changes what
# the mapping reads back, so it is safe on any mapping; on older kernels madvise fails (EINVAL)
# and only the pages stay.
MADV_PAGEOUT: Final = 21
# The compiler's libraries: their code and read-only data are used only to compile.
COMPILER_LIBRARIES: Final = ("libLLVM", "libclang")


@dataclass(frozen=True)
class Released:
    before_bytes: int  # resident, all of it
    after_bytes: int
    anon_before_bytes: int  # resident anonymous memory: the heap, ours alone
    anon_after_bytes: int
    paged_out: bool  # False where the kernel lacks MADV_PAGEOUT


def resident_bytes(status: Path = Path("/proc/self/status"), field: str = "VmRSS") -> int:
    """VmRSS, or another kB field of /proc/<pid>/status such as RssAnon."""
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def compiler_mappings(maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int]]:
    """Address ranges of the compiler libraries' mappings that are never written (no 'w'):
    reclaiming a private written page would be safe too, but it would only go to swap. The kernel
    pages out only what this process maps alone: pages another bcc process shares stay."""
    ranges = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1]:
            continue
        if any(name in Path(fields[5]).name for name in COMPILER_LIBRARIES):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def release() -> Released:
    """Frees what is garbage, returns free heap to the kernel, and pages out the compiler."""
    before, anon_before = resident_bytes(), resident_bytes(field="RssAnon")
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.malloc_trim(0)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    paged_out = True
    for start, end in compiler_mappings():
        if libc.madvise(start, end - start, MADV_PAGEOUT) != 0:
            paged_out = False
            break
    return Released(before, resident_bytes(), anon_before, resident_bytes(field="RssAnon"), paged_out)
