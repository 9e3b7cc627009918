"""bpf/oomtrace.h as clang compiles it for BPF, against its Python mirror in tracer/decode.py."""

import ctypes
import os

import pytest

from tracer.decode import NearOomStats, OomtraceEvent
from tracer.kernel.headers import find_headers
from tracer.kernel.source import BPF_DIR


@pytest.fixture(scope="module")
def compiled() -> object:
    from bcc import BPF  # a test may look at bcc's view of the header directly

    headers = find_headers(os.uname().release)
    if headers.path is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    text = (
        (BPF_DIR / "oomtrace.h").read_text()
        + """
BPF_ARRAY(event_layout, struct oomtrace_event, 1);
BPF_ARRAY(stats_layout, struct near_oom_stats, 1);
"""
    )
    bpf = BPF(text=text, cflags=["-w"])
    yield bpf
    bpf.cleanup()


@pytest.mark.parametrize(
    ("table", "mirror"),
    [("event_layout", OomtraceEvent), ("stats_layout", NearOomStats)],
    ids=["event", "stats"],
)
def test_python_mirror_has_the_size_and_field_offsets_clang_gave_the_c_struct(
    compiled: object, table: str, mirror: type[ctypes.Structure]
) -> None:
    leaf = compiled[table].Leaf  # type: ignore[index]  # bcc's ctypes type, built from clang's layout
    ours = [(name, getattr(mirror, name).offset) for name, _ in mirror._fields_]
    theirs = [
        (name, getattr(leaf, name).offset) for name, *_ in leaf._fields_ if not name.startswith("__pad")
    ]
    assert ctypes.sizeof(leaf) == ctypes.sizeof(mirror)
    assert ours == theirs
