"""bpf/oomtrace.h against what user space mirrors of it: the codes of tracer/schema.py, the
constants and struct layout of tracer/decode.py. Read as text, without a compiler; the kernel
test tests/kernel/test_layout.py compares the layout with what clang makes of it."""

import ctypes
import re

import pytest

from tracer import decode, schema
from tracer.decode import NearOomStats, OomtraceEvent
from tracer.kernel import source as bpf_source

HEADER = (bpf_source.BPF_DIR / "oomtrace.h").read_text()


def enum_values(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} \{{(.*?)\}};", HEADER, re.DOTALL)
    assert body is not None, f"enum {name} not found in oomtrace.h"
    return {n: int(v) for n, v in re.findall(r"\b(\w+) = (\d+),", body.group(1))}


def defines(prefix: str) -> dict[str, int]:
    return {n: int(v) for n, v in re.findall(rf"^#define ({prefix}\w*) (\d+)\s*$", HEADER, re.MULTILINE)}


# ---- codes shared with tracer/schema.py ----


def test_event_kind_codes_are_the_header_enum() -> None:
    assert enum_values("oomtrace_kind") == {f"OOMTRACE_{k.upper()}": v for k, v in schema.KIND_CODES.items()}


def test_tier_codes_are_the_header_tier_macros() -> None:
    assert defines("OOMTRACE_TIER_") == {
        f"OOMTRACE_TIER_{t.upper()}": v for t, v in schema.TIER_CODES.items()
    }


def test_no_tier_code_is_0_which_means_not_attached() -> None:
    assert 0 not in schema.TIER_CODES.values()
    assert bpf_source._TIER_VALUES[schema.UNAVAILABLE] == 0


def test_kernel_loss_reasons_follow_the_header_enum_order() -> None:
    losses = enum_values("oomtrace_loss")
    size = losses.pop("LOSS_MAX")
    assert [n.removeprefix("LOSS_").lower() for n, _ in sorted(losses.items(), key=lambda kv: kv[1])] == list(
        schema.KERNEL_LOSS_REASONS
    )
    assert sorted(losses.values()) == list(range(size))


# ---- constants shared with tracer/decode.py ----


def test_known_bits_match_the_header() -> None:
    header_bits = {
        name: 1 << int(bit) for name, bit in re.findall(r"#define (KNOWN_\w+)\s+\(1ULL << (\d+)\)", HEADER)
    }
    python_bits = {name: getattr(decode, name) for name in dir(decode) if name.startswith("KNOWN_")}
    assert header_bits == python_bits
    assert len(header_bits) == 12


def test_comm_length_matches_the_header() -> None:
    assert defines("OOMTRACE_COMM_LEN") == {"OOMTRACE_COMM_LEN": decode.COMM_LEN}


# ---- struct layout of tracer/decode.py ----

C_TYPES = {
    "__u32": (4, 4),
    "__s32": (4, 4),
    "__u64": (8, 8),
    "__s64": (8, 8),
    "__u16": (2, 2),
    "__s16": (2, 2),
    "char": (1, 1),
}


def c_struct_layout(name: str) -> tuple[list[tuple[str, int, int]], int]:
    """(field, offset, size) of `struct name` in oomtrace.h with natural alignment, and its size."""
    sizes = {k: int(v) for k, v in re.findall(r"#define (\w+) (\d+)\s*$", HEADER, re.MULTILINE)}
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", HEADER, re.DOTALL)
    assert body is not None, f"struct {name} not found in oomtrace.h"
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.DOTALL)
    fields, offset, max_align = [], 0, 1
    for decl in filter(None, (d.strip() for d in text.split(";"))):
        m = re.fullmatch(r"(\w+)\s+(\w+)(?:\[(\w+)\])?", decl)
        assert m, f"cannot parse field {decl!r}"
        size, align = C_TYPES[m.group(1)]
        count = 1
        if m.group(3):
            count = int(m.group(3)) if m.group(3).isdigit() else sizes[m.group(3)]
        offset = (offset + align - 1) // align * align
        fields.append((m.group(2), offset, size * count))
        offset += size * count
        max_align = max(max_align, align)
    return fields, (offset + max_align - 1) // max_align * max_align


def ctypes_layout(cls: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [(f[0], getattr(cls, f[0]).offset, getattr(cls, f[0]).size) for f in cls._fields_]


@pytest.mark.parametrize(
    ("c_name", "mirror"),
    [
        pytest.param("oomtrace_event", OomtraceEvent, id="oomtrace_event"),
        pytest.param("near_oom_stats", NearOomStats, id="near_oom_stats"),
    ],
)
def test_python_mirror_has_the_fields_offsets_and_size_of_the_header(
    c_name: str, mirror: type[ctypes.Structure]
) -> None:
    fields, size = c_struct_layout(c_name)
    assert ctypes_layout(mirror) == fields
    assert ctypes.sizeof(mirror) == size


def test_header_struct_has_no_implicit_padding() -> None:
    """Explicit padding only: each field starts where the previous one ended."""
    fields, size = c_struct_layout("oomtrace_event")
    ends = [off + sz for _, off, sz in fields]
    assert [off for _, off, _ in fields[1:]] == ends[:-1]
    assert ends[-1] == size
