"""The one module that talks to bcc: compile, attach, poll the ring buffer, read maps, detach.

Everything above it works on plain bytes and dicts. When the kernel refuses a probe's
tier, the probe drops to the next tier and the plan records why; nothing degrades
silently.
"""

import ctypes
import os
import re
from collections.abc import Callable
from typing import Any

from tracer import schema
from tracer.decode import NearOomStats
from tracer.kernel import probes
from tracer.kernel import source as bpf_source
from tracer.kernel.features import KernelFeatures
from tracer.kernel.headers import HeaderTree
from tracer.kernel.tiers import Plan
from tracer.schema import KERNEL_LOSS_REASONS


class LoadError(Exception):
    """The BPF programs could not be compiled or attached at any tier."""


# kprobe tier: probe → (entry program, return program) attached to the plan's target.
_KPROBE_PROGRAMS = {
    probes.MEMCG_OOM: ("memcg_oom_kprobe", "memcg_oom_kretprobe"),
    probes.OOM_CONTEXT: ("oom_context_kprobe", "oom_context_kretprobe"),
    probes.OOM_KILL: ("oom_kill_kprobe", None),
    probes.NEAR_OOM: ("near_oom_kprobe", "near_oom_kretprobe"),
    probes.CHARGE_FAILURE: ("charge_kprobe", "charge_kretprobe"),
}


def _probe_of_failure(message: str, plan: Plan) -> str | None:
    """Which probe a bcc error is about, from the program or function name it quotes."""
    match = re.search(r"k(?:ret)?func__vmlinux__(\w+)", message)
    if match:
        for choice in plan.choices:
            if choice.tier == schema.FENTRY and choice.target == match.group(1):
                return choice.probe
    for probe, (entry, ret) in _KPROBE_PROGRAMS.items():
        if entry in message or (ret and ret in message):
            return probe
    return None


class Tracer:
    """Loaded and attached programs; `poll` delivers raw records to `on_record`."""

    def __init__(self, bpf: Any, plan: Plan, source: str, on_record: Callable[[bytes], None]) -> None:
        self._bpf = bpf
        self.plan = plan
        self.source = source

        def callback(_ctx: Any, data: Any, size: int) -> None:
            on_record(ctypes.string_at(data, size))

        self._callback = callback  # keep a reference: bcc holds only a C pointer to it
        bpf["events"].open_ring_buffer(callback)

    def poll(self, timeout_ms: int) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        """Delivers the records already in the ring buffer, without waiting for more."""
        self._bpf.ring_buffer_consume()

    def near_oom_stats(self) -> dict[int, NearOomStats]:
        table = self._bpf["near_oom_stats"]
        stats = {}
        for key, value in table.items():
            stats[key.value] = NearOomStats.from_buffer_copy(bytes(value))
        return stats

    def forget_near_oom(self, memcg_ids: list[int]) -> None:
        table = self._bpf["near_oom_stats"]
        for memcg_id in memcg_ids:
            try:
                del table[table.Key(memcg_id)]
            except KeyError:
                continue

    def lost(self) -> dict[str, int]:
        table = self._bpf["lost"]
        return {reason: int(sum(table[table.Key(i)])) for i, reason in enumerate(KERNEL_LOSS_REASONS)}

    def close(self) -> None:
        self._bpf.cleanup()


def load(
    plan: Plan,
    features: KernelFeatures,
    constants: dict[str, int],
    headers: HeaderTree,
    on_record: Callable[[bytes], None],
    near_oom_quiet_s: float,
    log: Callable[[str], None],
    ringbuf_pages: int = bpf_source.DEFAULT_RINGBUF_PAGES,
) -> Tracer:
    """Compile and attach `plan`, moving a probe down a tier each time the kernel refuses it."""
    from bcc import BPF  # the only bcc import in oomtrace

    if headers.path is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    for _attempt in range(3 * len(plan.choices) + 1):
        values = bpf_source.defines(plan, features, constants, near_oom_quiet_s, ringbuf_pages=ringbuf_pages)
        text = bpf_source.source(values)
        bpf = None
        try:
            # -w: headers of another kernel warn about things these programs never use.
            bpf = BPF(text=text, cflags=["-w"])
            for choice in plan.choices:
                if choice.tier == schema.KPROBE:
                    entry, ret = _KPROBE_PROGRAMS[choice.probe]
                    bpf.attach_kprobe(event=choice.target, fn_name=entry)
                    if ret:
                        bpf.attach_kretprobe(event=choice.target, fn_name=ret)
            return Tracer(bpf, plan, text, on_record)
        except Exception as err:  # bcc raises bare Exception for compile, load and attach errors
            if bpf is not None:
                bpf.cleanup()
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            probe = _probe_of_failure(str(err), plan)
            if probe is None:
                raise LoadError(f"cannot load BPF programs: {message}") from err
            log(f"{probe}: {plan.tier(probe)} refused ({message}); trying the next tier")
            plan = plan.downgrade(probe, message, features)
    raise LoadError("cannot load BPF programs: every tier was refused")
