import contextlib
import gc
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.conftest import BtfBuilder, kernel_btf
from tracer.kernel import btf as B
from tracer.kernel.btf import Btf, BtfError


def sample() -> Btf:
    """struct outer {
        int a;                         // 0
        union { long b; struct { char c; unsigned int d; }; };   // 8 (c at 8, d at 12)
        struct inner in;               // 16
        struct inner arr[3];           // 32
        const struct inner *p;         // 80
    };   struct inner { int x; long y; }   // x at 0, y at 8, size 16
    """
    b = BtfBuilder()
    int_ = b.int_("int", 4, signed=True)
    long_ = b.int_("long", 8, signed=True)
    char = b.int_("char", 1, signed=True)
    uint = b.int_("unsigned int", 4)
    inner = b.struct("inner", 16, [("x", int_, 0), ("y", long_, 8)])
    anon_struct = b.struct("", 8, [("c", char, 0), ("d", uint, 4)])
    anon_union = b.union("", 8, [("b", long_, 0), ("", anon_struct, 0)])
    b.struct(
        "outer",
        88,
        [
            ("a", int_, 0),
            ("", anon_union, 8),
            ("in", inner, 16),
            ("arr", b.array(inner, 3), 32),
            ("p", b.ptr(b.const(inner)), 80),
        ],
    )
    b.union("u", 8, [("as_long", long_, 0), ("as_int", int_, 0)])
    b.enum("color", [("RED", 0), ("GREEN", 1), ("BLUE", -1)])
    b.enum64("big", [("HUGE", 1 << 40)])
    b.struct(
        "bits",
        8,
        [("head", int_, 0)],
        bitfields=[("flag", uint, 32, 1), ("mode", uint, 33, 3), ("tail", uint, 40, 8)],
    )
    return Btf(b.build())


def test_top_level_member_offset_is_its_byte_offset() -> None:
    assert sample().offset("outer", "a") == 0
    assert sample().offset("outer", "in") == 16


@pytest.mark.parametrize(
    ("path", "offset"),
    [
        pytest.param("b", 8, id="member of an anonymous union"),
        pytest.param("c", 8, id="member of an anonymous struct inside an anonymous union"),
        pytest.param("d", 12, id="second member of a nested anonymous struct"),
    ],
)
def test_members_of_anonymous_structs_and_unions_are_found_through_them(path: str, offset: int) -> None:
    assert sample().offset("outer", path) == offset


@pytest.mark.parametrize(
    ("path", "offset"),
    [
        pytest.param("in.x", 16, id="first member of an embedded struct"),
        pytest.param("in.y", 24, id="second member of an embedded struct"),
    ],
)
def test_dotted_path_adds_the_offsets_of_embedded_structs(path: str, offset: int) -> None:
    assert sample().offset("outer", path) == offset


def test_member_returns_the_member_type_id() -> None:
    btf = sample()
    _, type_id = btf.member("outer", "in")
    assert btf.type(type_id).name == "inner"


def test_dotted_path_through_a_pointer_is_an_error_naming_the_path() -> None:
    with pytest.raises(BtfError, match=r"no member outer\.p\.x"):
        sample().offset("outer", "p.x")


def test_bitfield_members_of_a_kind_flag_struct_report_their_byte_offset() -> None:
    btf = sample()
    assert btf.offset("bits", "flag") == 4
    assert btf.offset("bits", "tail") == 5


def test_bitfield_size_bits_do_not_leak_into_the_bit_offset() -> None:
    btf = sample()
    members = {m.name: m for m in btf.type(btf.struct_id("bits")).members}
    assert members["mode"].bit_offset == 33
    assert members["tail"].bit_offset == 40


def test_union_is_found_by_struct_id_and_its_members_share_offset_zero() -> None:
    btf = sample()
    assert btf.type(btf.struct_id("u")).kind == B.UNION
    assert btf.offset("u", "as_long") == btf.offset("u", "as_int") == 0


@pytest.mark.parametrize(
    ("member", "size"),
    [
        pytest.param("a", 4, id="int"),
        pytest.param("in", 16, id="struct"),
        pytest.param("arr", 48, id="array of structs"),
        pytest.param("p", 8, id="pointer"),
    ],
)
def test_size_of_a_member_type(member: str, size: int) -> None:
    btf = sample()
    assert btf.size(btf.member("outer", member)[1]) == size


def test_size_follows_typedefs_and_qualifiers() -> None:
    b = BtfBuilder()
    long_ = b.int_("long", 8, signed=True)
    atomic = b.struct("", 8, [("counter", long_, 0)])
    typedef = b.typedef("atomic_long_t", b.const(b.typedef("atomic64_t", atomic)))
    btf = Btf(b.build())
    assert btf.size(typedef) == 8
    assert btf.resolve(typedef) == atomic


def test_void_has_no_size() -> None:
    with pytest.raises(BtfError):
        sample().size(0)


def test_typedef_loop_is_an_error_not_a_hang() -> None:
    b = BtfBuilder()
    b.typedef("a", 2)
    b.typedef("b", 1)
    with pytest.raises(BtfError, match="too long"):
        Btf(b.build()).resolve(1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("RED", 0, id="first value"),
        pytest.param("GREEN", 1, id="second value"),
        pytest.param("BLUE", -1, id="negative value"),
        pytest.param("HUGE", 1 << 40, id="enum64 value"),
    ],
)
def test_enum_value_is_found_by_name_in_any_enum(name: str, value: int) -> None:
    assert sample().enum_value(name) == value


def test_anonymous_enum_values_are_found() -> None:
    assert Btf(kernel_btf()).enum_value("MM_SHMEMPAGES") == 3


def test_find_looks_up_by_kind_and_name() -> None:
    btf = sample()
    assert btf.find(B.STRUCT, "inner") is not None
    assert btf.find(B.UNION, "inner") is None
    assert btf.find(B.STRUCT, "nonexistent") is None


@pytest.mark.parametrize(
    ("mark_victim", "params"),
    [
        pytest.param("task", ["struct task_struct *", "uid_t"], id="6.9+: task_struct and uid"),
        pytest.param("int", ["int"], id="before 6.9: pid only"),
        pytest.param(None, None, id="no btf_trace typedef"),
    ],
)
def test_raw_tracepoint_params_skip_the_hidden_data_pointer(
    mark_victim: str | None, params: list[str] | None
) -> None:
    assert Btf(kernel_btf(mark_victim=mark_victim)).raw_tracepoint_params("mark_victim") == params


def test_type_name_spells_pointers_qualifiers_and_typedefs_like_c() -> None:
    btf = sample()
    _, p = btf.member("outer", "p")
    assert btf.type_name(p) == "struct inner *"
    assert btf.type_name(0) == "void"
    assert btf.type_name(btf.member("outer", "a")[1]) == "int"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda b: b.offset("nonexistent", "x"), "kernel BTF has no struct nonexistent", id="struct"
        ),
        pytest.param(lambda b: b.offset("outer", "zz"), "kernel BTF has no member outer.zz", id="member"),
        pytest.param(
            lambda b: b.offset("outer", "in.zz"), "kernel BTF has no member outer.in.zz", id="nested"
        ),
        pytest.param(
            lambda b: b.enum_value("PURPLE"), "kernel BTF has no enum value PURPLE", id="enum value"
        ),
    ],
)
def test_missing_names_raise_btf_error_naming_what_is_missing(
    call: Callable[[Btf], object], message: str
) -> None:
    with pytest.raises(BtfError, match=message.replace(".", r"\.")):
        call(sample())


def test_has_member_answers_without_raising() -> None:
    btf = sample()
    assert btf.has_member("outer", "in.y")
    assert not btf.has_member("outer", "in.zz")
    assert not btf.has_member("nonexistent", "x")


def test_forward_declaration_is_not_a_struct() -> None:
    b = BtfBuilder()
    b.fwd("task_struct")
    with pytest.raises(BtfError, match="no struct task_struct"):
        Btf(b.build()).struct_id("task_struct")


def test_types_after_every_kind_with_extra_data_are_still_parsed() -> None:
    """A miscounted kind-specific tail would shift every later type."""
    b = BtfBuilder()
    int_ = b.int_("int", 4)
    b.array(int_, 2)
    b.enum("e", [("A", 1), ("B", 2)])
    b.enum64("e64", [("C", 3)])
    b.func_proto(int_, [("x", int_), ("y", int_), ("z", int_)])
    b.struct("s", 8, [("p", int_, 0), ("q", int_, 4)])
    b.struct("last", 4, [("v", int_, 0)])
    assert Btf(b.build()).offset("last", "v") == 0


def test_bad_magic_is_a_btf_error() -> None:
    blob = bytearray(kernel_btf())
    struct.pack_into("<H", blob, 0, 0x9FEB)  # big-endian BTF read as little-endian
    with pytest.raises(BtfError, match="not a BTF blob"):
        Btf(bytes(blob))


@pytest.mark.parametrize("length", [0, 10, 23], ids=["empty", "half a header", "one byte short of a header"])
def test_blob_shorter_than_a_header_is_a_btf_error(length: int) -> None:
    with pytest.raises(BtfError, match="too short"):
        Btf(kernel_btf()[:length])


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(30, id="cut inside the type section"),
        pytest.param(-5, id="cut inside the string section"),
    ],
)
def test_blob_shorter_than_its_header_says_is_a_btf_error(cut: int) -> None:
    blob = kernel_btf()
    with pytest.raises(BtfError):
        Btf(blob[:cut])


def test_from_file_reads_a_blob(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(kernel_btf())
    assert Btf.from_file(path).offset("task_struct", "pid") == 1264


def test_from_file_of_a_missing_file_is_a_btf_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match=r"cannot read BTF from .*/missing"):
        Btf.from_file(tmp_path / "missing")


def _with_type_section_cut_short(blob: bytes) -> bytes:
    """The header's type section length 2 bytes short: the last type record runs past it."""
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    return blob[:8] + struct.pack("<IIII", type_off, type_len - 2, str_off, str_len) + blob[24:]


@pytest.mark.parametrize("parses", [True, False], ids=["parsed", "malformed"])
def test_the_garbage_collector_paused_for_the_parse_is_running_again_after_it(parses: bool) -> None:
    blob = kernel_btf() if parses else _with_type_section_cut_short(kernel_btf())
    assert gc.isenabled()
    try:
        Btf(blob)
    except BtfError:
        assert not parses
    assert gc.isenabled()
    gc.disable()  # a caller that paused it itself keeps it paused
    try:
        with contextlib.suppress(BtfError):
            Btf(blob)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_type_record_running_past_its_section_is_a_btf_error() -> None:
    with pytest.raises(BtfError, match="runs 2 bytes past the type section"):
        Btf(_with_type_section_cut_short(kernel_btf()))
