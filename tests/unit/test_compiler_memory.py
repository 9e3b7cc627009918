"""Which mappings are given back after the compile: the compiler libraries' unwritten pages only."""

from pathlib import Path

from tracer.kernel import compiler_memory

MAPS = """\
55d0c0a00000-55d0c0b00000 r--p 00000000 08:01 131 /usr/bin/python3.11
7f0000000000-7f0001000000 r--p 00000000 08:01 200 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0001000000-7f0004000000 r-xp 01000000 08:01 200 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0004000000-7f0004100000 rw-p 04000000 08:01 200 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0005000000-7f0005800000 r-xp 00000000 08:01 201 /usr/lib/x86_64-linux-gnu/libclang-cpp.so.14
7f0006000000-7f0006100000 r-xp 00000000 08:01 202 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
7f0007000000-7f0007021000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_only_unwritten_llvm_and_clang_mappings_are_paged_out(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    assert compiler_memory.compiler_mappings(maps) == [
        (0x7F0000000000, 0x7F0001000000),
        (0x7F0001000000, 0x7F0004000000),
        (0x7F0005000000, 0x7F0005800000),
    ]  # not libbcc (the ring buffer and maps run in it), not written pages, not anonymous ones


def test_resident_bytes_reads_vmrss_in_kib(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\toomtrace\nVmHWM:\t  240000 kB\nVmRSS:\t   67584 kB\n")
    assert compiler_memory.resident_bytes(status) == 67584 * 1024
