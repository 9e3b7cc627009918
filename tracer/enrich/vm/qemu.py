"""QEMU's command line → the VM it runs: name, guest memory, vCPUs, the devices the overhead
formula counts. Only these parsed facts are kept: the command line itself can carry secrets
and never goes into an event or a log."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# Bounds that no real command line reaches; past them a value is garbage, not a VM.
MAX_CMDLINE_BYTES: Final = 1 << 20
MAX_GUEST_MEMORY_BYTES: Final = 1 << 52  # 4 PiB
MAX_VCPUS: Final = 16384

# libvirt domain names: printable, no "/", at most what a machine name can carry. Anything
# else (control characters, terminal escapes) is not a name to print.
_GUEST_NAME: Final = re.compile(r"[A-Za-z0-9_.:+@-][A-Za-z0-9_.:+@ -]{0,254}", re.ASCII)
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII
)

# Options whose value we read; every other option is skipped without looking at its value.
_WANTED: Final = frozenset(
    ("-name", "-m", "-smp", "-object", "-machine", "-M", "-numa", "-device", "-vga", "-tpmdev")
)
# -device drivers that give the guest a display: KubeVirt counts video RAM for them.
_VIDEO_DRIVERS: Final = frozenset(
    ("VGA", "virtio-vga", "virtio-gpu-pci", "bochs-display", "qxl-vga", "cirrus-vga", "ramfb", "virtio-gpu")
)
_MEMORY_BACKENDS: Final = frozenset(("memory-backend-ram", "memory-backend-file", "memory-backend-memfd"))
_SIZE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([bBkKmMgGtTpPeE]?)", re.ASCII)
_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
    "e": 1 << 60,
}


@dataclass(frozen=True)
class QemuInfo:
    """What a QEMU command line says about its VM. Unknown values are None."""

    vm: str | None  # "<namespace>/<vmi>"
    guest_memory_bytes: int | None
    vcpus: int | None
    video: bool = False  # a display device: KubeVirt adds video RAM to the overhead
    vfio: bool = False  # a passed-through PCI device: KubeVirt adds 1 GiB
    tpm: bool = False  # a TPM (swtpm process): KubeVirt adds 53 MiB
    sev: bool = False  # an SEV guest: KubeVirt adds 256 MiB
    pid: int | None = None  # the QEMU process it came from
    guest_name: str | None = None  # -name guest=: the libvirt domain name (a plain-host VM's `vm`)


def _split_args(raw: bytes) -> list[str | None]:
    """NUL-separated argv; an argument that is not UTF-8 is None (it names nothing we use)."""
    truncated = not raw.endswith(b"\0")
    parts = raw.split(b"\0")
    if raw.endswith(b"\0"):
        parts.pop()
    elif truncated and len(raw) >= MAX_CMDLINE_BYTES:
        parts.pop()  # cut off mid-argument by the read limit: not a whole value
    args: list[str | None] = []
    for part in parts:
        try:
            args.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            args.append(None)
    return args


def split_opts(value: str, implied: str) -> dict[str, str]:
    """QEMU's `key=value,key=value` option syntax (`,,` is a literal comma).

    The first item may omit its key: it is then `implied` (e.g. `-m 2048` is size=2048).
    """
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == ",":
            if value[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    items.append("".join(current))
    opts: dict[str, str] = {}
    for n, item in enumerate(items):
        key, sep, val = item.partition("=")
        if not sep:
            if n == 0 and item:
                opts[implied] = item
            continue
        opts.setdefault(key, val)
    return opts


def _opts(value: str, implied: str) -> dict[str, Any]:
    """An option value in either syntax QEMU takes: JSON (`{"qom-type": ...}`) or key=value."""
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return split_opts(value, implied)


def parse_size(value: object, default_unit: str = "b") -> int | None:
    """A QEMU size (`2048`, `2G`, `1994752k`, `1.5G`, or a JSON integer) in bytes; None if garbage.

    Suffixes are binary (k = KiB). A bare number is in `default_unit` (MiB for -m).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number, unit = float(value), default_unit
        whole = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is None or len(value) > 40:
            return None
        unit = m.group(2).lower() or default_unit
        if "." in m.group(1):
            number = float(m.group(1))
            whole = None
        else:
            whole = int(m.group(1))
            number = float(whole)
    else:
        return None
    scale = _UNITS[unit]
    size = whole * scale if whole is not None else int(number * scale)
    if not 0 < size <= MAX_GUEST_MEMORY_BYTES:
        return None
    return size


def _vm_name(guest: str | None) -> str | None:
    """`<namespace>_<vmi>` → `<namespace>/<vmi>`; None for any other guest name.

    Neither a namespace (DNS label) nor a VMI name (DNS subdomain) can hold "_", so the first
    one splits them unambiguously.
    """
    if not guest:
        return None
    namespace, sep, name = guest.partition("_")
    if (
        not sep
        or not _DNS_LABEL.fullmatch(namespace)
        or len(name) > 253
        or not _DNS_SUBDOMAIN.fullmatch(name)
    ):
        return None
    return f"{namespace}/{name}"


def _smp(value: str) -> int | None:
    opts = split_opts(value, "cpus")
    try:
        if "cpus" in opts:
            cpus = int(opts["cpus"])
        elif "maxcpus" in opts:
            cpus = int(opts["maxcpus"])
        else:
            topology = [int(opts.get(k, "1")) for k in ("sockets", "dies", "clusters", "cores", "threads")]
            if not any(k in opts for k in ("sockets", "dies", "clusters", "cores", "threads")):
                return None
            cpus = 1
            for n in topology:
                if not 0 < n <= MAX_VCPUS:
                    return None
                cpus *= n
    except ValueError:
        return None
    return cpus if 0 < cpus <= MAX_VCPUS else None


def parse_qemu_cmdline(raw: bytes, pid: int | None = None) -> QemuInfo:
    """Parse /proc/<pid>/cmdline of a QEMU process. Never raises; unknown fields are None."""
    args = _split_args(raw[:MAX_CMDLINE_BYTES])
    values: dict[str, list[str | None]] = {}
    i = 1
    while i < len(args):
        arg = args[i]
        if arg is not None and arg.startswith("--"):
            arg = arg[1:]  # QEMU takes --opt as -opt
        if arg in _WANTED:
            values.setdefault(arg, []).append(args[i + 1] if i + 1 < len(args) else None)
            i += 2
        else:
            i += 1

    guest: str | None = None
    for value in values.get("-name", []):
        if value is not None:
            guest = split_opts(value, "guest").get("guest")
    memory: int | None = None
    for value in values.get("-m", []):
        memory = None if value is None else parse_size(split_opts(value, "size").get("size"), "m")
    vcpus: int | None = None
    for value in values.get("-smp", []):
        vcpus = None if value is None else _smp(value)

    backends: dict[str, int | None] = {}
    sev = False
    for value in values.get("-object", []):
        obj = _opts(value, "qom-type") if value is not None else {}
        qom_type = obj.get("qom-type")
        if qom_type in _MEMORY_BACKENDS and isinstance(obj.get("id"), str):
            backends[obj["id"]] = parse_size(obj.get("size"))
        elif isinstance(qom_type, str) and qom_type.startswith("sev"):
            sev = True
    if memory is None and backends:
        memory = _backend_memory(values, backends)

    video = vfio = False
    for value in values.get("-device", []):
        driver = _opts(value, "driver").get("driver") if value is not None else None
        video = video or driver in _VIDEO_DRIVERS
        vfio = vfio or driver == "vfio-pci"
    for value in values.get("-vga", []):
        video = video or (value is not None and value != "none")
    return QemuInfo(
        vm=_vm_name(guest),
        guest_memory_bytes=memory,
        vcpus=vcpus,
        video=video,
        vfio=vfio,
        tpm=bool(values.get("-tpmdev")),
        sev=sev,
        pid=pid,
        guest_name=guest if guest is not None and _GUEST_NAME.fullmatch(guest) else None,
    )


def _backend_memory(values: Mapping[str, list[str | None]], backends: Mapping[str, int | None]) -> int | None:
    """Guest RAM from memory-backend objects, when -m did not say it.

    The machine's `memory-backend=<id>` first, then the conventional `pc.ram`, then the sum of
    the NUMA nodes' `memdev=` backends.
    """
    for value in values.get("-machine", []) + values.get("-M", []):
        if value is not None:
            chosen = _opts(value, "type").get("memory-backend")
            if isinstance(chosen, str) and chosen in backends:
                return backends[chosen]
    if "pc.ram" in backends:
        return backends["pc.ram"]
    total = 0
    for value in values.get("-numa", []):
        memdev = _opts(value, "type").get("memdev") if value is not None else None
        if isinstance(memdev, str) and memdev in backends:
            size = backends[memdev]
            if size is None:
                return None
            total += size
    return total if 0 < total <= MAX_GUEST_MEMORY_BYTES else None


