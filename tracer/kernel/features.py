"""What this kernel allows, detected without bcc: kallsyms, tracefs, kernel BTF, kprobes,
an fentry load test, cgroup v2. Roots are parameters so tests can use fixture trees.
"""

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tracer.kernel.probes import TRACEPOINTS

if TYPE_CHECKING:
    from tracer.kernel.btf import Btf


@dataclass(frozen=True)
class KernelFeatures:
    release: str
    btf: bool
    btf_error: str | None
    kprobes: bool
    fentry: bool
    fentry_reason: str
    symbols: frozenset[str]
    tracepoints: frozenset[str]  # "group/name" with a readable format file
    mark_victim_raw_task: bool  # raw oom:mark_victim passes the victim's task_struct
    mark_victim_fields: frozenset[str]
    cgroup2_memory: bool  # pure cgroup v2 with the memory controller at the root
    # The parsed kernel BTF when usable, so callers need not parse it (~1 s) again.
    btf_data: "Btf | None" = field(default=None, compare=False, repr=False)



def read_symbols(kallsyms: Path) -> frozenset[str]:
    """Function names in kallsyms; suffixed clones (.isra, .constprop, .cold) are skipped
    because their arguments may differ from the source's."""
    names = set()
    try:
        with kallsyms.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW" and "." not in parts[2]:
                    names.add(parts[2])
    except OSError:
        pass
    return frozenset(names)


def _exists(path: Path) -> bool:
    """Like Path.exists(), but a directory this user may not search (tracefs is 0700) is
    "not there" rather than an exception."""
    try:
        return path.exists()
    except OSError:
        return False


def _tracefs(sys_root: Path) -> Path | None:
    for candidate in (sys_root / "kernel/tracing", sys_root / "kernel/debug/tracing"):
        if _exists(candidate / "events"):
            return candidate
    return None


def _fentry_refusal(btf: "Btf") -> str | None:
    """Why fentry cannot be used, from a load test of a no-op program (never attached)."""
    from tracer.kernel.btf import FUNC
    from tracer.kernel.fentry_check import try_load_fentry

    func_id = btf.find(FUNC, "mem_cgroup_out_of_memory")
    if func_id is None:
        return "mem_cgroup_out_of_memory not in BTF"
    if os.geteuid() != 0:
        return "not verified: loading a test program needs root"
    return try_load_fentry(func_id)


def detect(
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    btf_path: Path | None = None,
    release: str | None = None,
    use_btf: bool = True,
) -> KernelFeatures:
    from tracer.kernel.btf import Btf, BtfError  # parsing takes ~1 s: only when detecting

    btf_path = btf_path or sys_root / "kernel/btf/vmlinux"
    btf_ok, btf_error, raw_task, fentry_refusal = False, None, False, None
    btf: Btf | None = None
    if not use_btf:
        btf_error = "disabled by --no-btf"
    elif not btf_path.exists():
        btf_error = f"{btf_path} not found (kernel built without CONFIG_DEBUG_INFO_BTF)"
    else:
        try:
            btf = Btf.from_file(btf_path)
            from tracer.kernel.offsets import kernel_constants

            kernel_constants(btf)
            btf_ok = True
            params = btf.raw_tracepoint_params("mark_victim") or []
            raw_task = bool(params) and params[0] == "struct task_struct *"
            fentry_refusal = _fentry_refusal(btf)
        except BtfError as err:
            btf_error, btf = str(err), None

    tracefs = _tracefs(sys_root)
    tracepoints = set()
    mark_victim_fields: set[str] = set()
    if tracefs is not None:
        for tracepoint in {tp for tps in TRACEPOINTS.values() for tp in tps}:
            fmt = tracefs / "events" / tracepoint / "format"
            try:
                text = fmt.read_text()
            except OSError:
                continue
            tracepoints.add(tracepoint)
            if tracepoint == "oom/mark_victim":
                for line in text.splitlines():
                    line = line.strip()
                    if line.startswith("field:") and not line.split(";")[0].split()[-1].startswith("common_"):
                        mark_victim_fields.add(line.split(";")[0].split()[-1])

    kprobes = _exists(sys_root / "bus/event_source/devices/kprobe") or (
        tracefs is not None and _exists(tracefs / "kprobe_events")
    )
    if not btf_ok:
        fentry, fentry_reason = False, "needs kernel BTF"
    elif platform.machine() not in ("x86_64", "aarch64"):
        fentry, fentry_reason = False, f"no BPF trampolines on {platform.machine()}"
    elif fentry_refusal is not None:
        fentry, fentry_reason = False, fentry_refusal
    else:
        fentry, fentry_reason = True, ""

    controllers = sys_root / "fs/cgroup/cgroup.controllers"
    try:
        cgroup2_memory = "memory" in controllers.read_text().split()
    except OSError:
        cgroup2_memory = False

    return KernelFeatures(
        release=release or os.uname().release,
        btf=btf_ok,
        btf_error=btf_error,
        kprobes=kprobes,
        fentry=fentry,
        fentry_reason=fentry_reason,
        symbols=read_symbols(proc_root / "kallsyms"),
        tracepoints=frozenset(tracepoints),
        mark_victim_raw_task=raw_task and btf_ok,
        mark_victim_fields=frozenset(mark_victim_fields),
        cgroup2_memory=cgroup2_memory,
        btf_data=btf if btf_ok else None,
    )
