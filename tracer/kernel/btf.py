"""Reads the running kernel's BTF (/sys/kernel/btf/vmlinux) for struct offsets and enum values.

This is what lets oomtrace read kernel structs correctly while bcc compiles against
whatever header tree is at hand: offsets come from the kernel itself, never from
headers of another kernel. Format: the kernel's Documentation/bpf/btf.rst.
"""

import gc
import struct
from dataclasses import dataclass
from pathlib import Path

BTF_MAGIC = 0xEB9F

# BTF_KIND_* values (include/uapi/linux/btf.h).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19

# Bytes of kind-specific data after the 12-byte common header: fixed, or per vlen item.
_FIXED_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ITEM = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class BtfError(Exception):
    """The BTF blob is unreadable, or lacks a type or member we need."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM*, referenced type id otherwise
    members: tuple[Member, ...] = ()  # STRUCT/UNION members, FUNC_PROTO params (bit_offset 0)
    array: tuple[int, int] | None = None  # (element type id, number of elements)
    enum_values: tuple[tuple[str, int], ...] = ()


class Btf:
    """Types of one BTF blob, indexed by id and by (kind, name)."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"not a BTF blob (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        end = max(hdr_len + type_off + type_len, hdr_len + str_off + str_len)
        if end > len(blob):
            raise BtfError(f"BTF blob truncated: header says {end} bytes, blob has {len(blob)}")
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[BtfType | None] = [None]  # id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        # Hundreds of thousands of small objects, none of them garbage: the collector's passes
        # over them doubled the parse time (0.64 s → 0.32 s for this machine's vmlinux).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._parse_types(blob, hdr_len + type_off, hdr_len + type_off + type_len)
        except struct.error as err:
            raise BtfError(f"BTF type section is malformed: {err}") from err
        finally:
            if collecting:
                gc.enable()

    @classmethod
    def from_file(cls, path: str | Path = "/sys/kernel/btf/vmlinux") -> "Btf":
        try:
            return cls(Path(path).read_bytes())
        except OSError as err:
            raise BtfError(f"cannot read BTF from {path}: {err.strerror}") from err

    def _name(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end].decode("ascii", "replace")

    def _parse_types(self, blob: bytes, pos: int, end: int) -> None:
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, size_or_type = unpack("<III", blob, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = info >> 31
            name = self._name(name_off) if name_off else ""
            members: tuple[Member, ...] = ()
            array = None
            enum_values: tuple[tuple[str, int], ...] = ()
            if kind in (STRUCT, UNION):
                items = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack("<III", blob, pos + 12 * i)
                    # With kind_flag the low 24 bits are the bit offset, the high 8 a bitfield size.
                    bit_offset = m_off & 0xFFFFFF if kind_flag else m_off
                    items.append(Member(self._name(m_name) if m_name else "", m_type, bit_offset))
                members = tuple(items)
            elif kind == FUNC_PROTO:
                members = tuple(
                    Member(self._name(p_name) if p_name else "", p_type, 0)
                    for p_name, p_type in (unpack("<II", blob, pos + 8 * i) for i in range(vlen))
                )
            elif kind == ARRAY:
                elem_type, _index_type, nelems = unpack("<III", blob, pos)
                array = (elem_type, nelems)
            elif kind == ENUM:
                enum_values = tuple(
                    (self._name(e_name), e_val)
                    for e_name, e_val in (unpack("<Ii", blob, pos + 8 * i) for i in range(vlen))
                )
            elif kind == ENUM64:
                enum_values = tuple(
                    (self._name(e_name), lo | (hi << 32))
                    for e_name, lo, hi in (unpack("<III", blob, pos + 12 * i) for i in range(vlen))
                )
            pos += _FIXED_EXTRA.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen
            type_id = len(self.types)
            self.types.append(BtfType(kind, name, size_or_type, members, array, enum_values))
            if name:
                self._by_name.setdefault((kind, name), type_id)
        if pos != end:
            raise BtfError(f"BTF type {len(self.types) - 1} runs {pos - end} bytes past the type section")

    def find(self, kind: int, name: str) -> int | None:
        return self._by_name.get((kind, name))

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(32):
            t = self.types[type_id]
            if t is None or t.kind not in _MODIFIERS:
                return type_id
            type_id = t.size_or_type
        raise BtfError("type chain too long")

    def type(self, type_id: int) -> BtfType:
        t = self.types[type_id]
        if t is None:
            raise BtfError("void has no members")
        return t

    def size(self, type_id: int) -> int:
        t = self.type(self.resolve(type_id))
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return t.size_or_type
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY and t.array:
            return self.size(t.array[0]) * t.array[1]
        raise BtfError(f"type {t.name or type_id} has no size")

    def struct_id(self, name: str) -> int:
        type_id = self.find(STRUCT, name) or self.find(UNION, name)
        if type_id is None:
            raise BtfError(f"kernel BTF has no struct {name}")
        return type_id

    def _member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(byte offset, member type id) of `name`, looking inside anonymous structs/unions."""
        t = self.type(self.resolve(type_id))
        for m in t.members:
            if m.name == name:
                return m.bit_offset // 8, m.type_id
            if not m.name and self.type(self.resolve(m.type_id)).kind in (STRUCT, UNION):
                inner = self._member(m.type_id, name)
                if inner is not None:
                    return m.bit_offset // 8 + inner[0], inner[1]
        return None

    def member(self, struct_name: str, path: str) -> tuple[int, int]:
        """Byte offset and type id of a dotted member path, e.g. ("mem_cgroup", "memory.max")."""
        type_id, offset = self.struct_id(struct_name), 0
        for part in path.split("."):
            found = self._member(type_id, part)
            if found is None:
                raise BtfError(f"kernel BTF has no member {struct_name}.{path}")
            offset += found[0]
            type_id = found[1]
        return offset, type_id

    def offset(self, struct_name: str, path: str) -> int:
        return self.member(struct_name, path)[0]

    def has_member(self, struct_name: str, path: str) -> bool:
        try:
            self.member(struct_name, path)
        except BtfError:
            return False
        return True

    def enum_value(self, name: str) -> int:
        for t in self.types:
            if t is not None and t.kind in (ENUM, ENUM64):
                for value_name, value in t.enum_values:
                    if value_name == name:
                        return value
        raise BtfError(f"kernel BTF has no enum value {name}")

    def func_params(self, name: str) -> list[str] | None:
        """Parameter types of a kernel function (BTF_KIND_FUNC), or None if BTF lacks it."""
        func = self.find(FUNC, name)
        if func is None:
            return None
        proto = self.type(self.type(func).size_or_type)
        return [self.type_name(p.type_id) for p in proto.members]

    def raw_tracepoint_params(self, tracepoint: str) -> list[str] | None:
        """Parameter types of a raw tracepoint (after the hidden `void *__data`), as C-ish names.

        The kernel emits `typedef void (*btf_trace_<tp>)(void *, <TP_PROTO args>)` for each
        tracepoint; e.g. oom:mark_victim is ["struct task_struct *", "uid_t"] from 6.9 (and
        stable backports), ["int"] before.
        """
        typedef = self.find(TYPEDEF, f"btf_trace_{tracepoint}")
        if typedef is None:
            return None
        ptr = self.type(self.type(typedef).size_or_type)
        proto = self.type(ptr.size_or_type)
        return [self.type_name(p.type_id) for p in proto.members[1:]]

    def type_name(self, type_id: int) -> str:
        t = self.types[type_id]
        if t is None:
            return "void"
        if t.kind == PTR:
            return self.type_name(t.size_or_type) + " *"
        if t.kind in (CONST, VOLATILE, RESTRICT, TYPE_TAG):
            return self.type_name(t.size_or_type)
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum "}.get(t.kind, "")
        return prefix + (t.name or "(anon)")
