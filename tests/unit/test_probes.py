import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.conftest import (
    FUNCTIONS,
    MARK_VICTIM,
    RECLAIM_BEGIN,
    RECLAIM_END,
    TRACEPOINTS,
    full_kernel_features,
    kernel_btf,
)
from tracer.kernel import fentry_check
from tracer.kernel.features import KernelFeatures, detect, read_symbols
from tracer.kernel.probes import (
    CHARGE_FAILURE,
    MEMCG_OOM,
    NEAR_OOM,
    OOM_CONTEXT,
    OOM_KILL,
    PROBES,
)
from tracer.kernel.tiers import Plan, plan
from tracer.schema import FENTRY, KPROBE, TRACEPOINT, UNAVAILABLE


def features(**overrides: Any) -> KernelFeatures:
    return full_kernel_features(frozenset({"pid", "comm", "anon_rss", "uid"}), **overrides)


def tiers(p: Plan) -> dict[str, str]:
    return {c.probe: c.tier for c in p.choices}


NO_BTF = {
    "btf": False,
    "btf_error": "disabled by --no-btf",
    "fentry": False,
    "fentry_reason": "needs kernel BTF",
}
NO_FENTRY = {
    "fentry": False,
    "fentry_reason": "kernel refused to load an fentry program: Operation not permitted",
}


# ---- plan ----


def test_plan_lists_each_probe_once_in_order() -> None:
    assert [c.probe for c in plan(features()).choices] == list(PROBES)


def test_with_fentry_every_probe_gets_fentry_with_no_reason() -> None:
    p = plan(features())
    assert tiers(p) == dict.fromkeys(PROBES, FENTRY)
    assert all(c.reason == "" for c in p.choices)
    assert p.btf and p.notes == ()


@pytest.mark.parametrize(
    ("probe", "target"),
    [
        (MEMCG_OOM, "mem_cgroup_out_of_memory"),
        (OOM_CONTEXT, "oom_kill_process"),
        (OOM_KILL, "__oom_kill_process"),
        (NEAR_OOM, "try_to_free_mem_cgroup_pages"),
        (CHARGE_FAILURE, "try_charge_memcg"),
    ],
)
def test_fentry_targets_are_the_kernel_functions(probe: str, target: str) -> None:
    assert plan(features()).choice(probe).target == target


def test_without_fentry_every_probe_falls_back_to_kprobe_saying_why() -> None:
    p = plan(features(**NO_FENTRY))
    assert tiers(p) == dict.fromkeys(PROBES, KPROBE)
    for c in p.choices:
        assert c.reason == "fentry: kernel refused to load an fentry program: Operation not permitted"


def test_with_only_tracepoints_oom_kill_and_near_oom_use_them_and_the_rest_say_why_not() -> None:
    p = plan(features(**NO_FENTRY, kprobes=False))
    assert tiers(p) == {
        MEMCG_OOM: UNAVAILABLE,
        OOM_CONTEXT: UNAVAILABLE,
        OOM_KILL: TRACEPOINT,
        NEAR_OOM: TRACEPOINT,
        CHARGE_FAILURE: UNAVAILABLE,
    }
    assert p.choice(NEAR_OOM).target == f"{RECLAIM_BEGIN}, {RECLAIM_END}"
    for probe in (MEMCG_OOM, OOM_CONTEXT, CHARGE_FAILURE):
        reason = p.choice(probe).reason
        assert reason.startswith("fentry: kernel refused")
        assert "kprobe: kernel has no kprobes (CONFIG_KPROBES)" in reason
        assert "tracepoint: no tracepoint fires at this point" in reason
        assert p.choice(probe).target == ""


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        pytest.param(True, "raw oom/mark_victim", id="raw tracepoint with the victim task_struct"),
        pytest.param(False, "oom/mark_victim", id="format-file tracepoint"),
    ],
)
def test_oom_kill_tracepoint_target_says_whether_it_is_raw(raw: bool, target: str) -> None:
    p = plan(features(**NO_FENTRY, kprobes=False, mark_victim_raw_task=raw))
    assert p.choice(OOM_KILL).target == target


def test_without_btf_struct_reading_probes_refuse_kprobe_and_near_oom_keeps_it() -> None:
    p = plan(features(**NO_BTF, mark_victim_raw_task=False))
    assert tiers(p) == {
        MEMCG_OOM: UNAVAILABLE,
        OOM_CONTEXT: UNAVAILABLE,
        OOM_KILL: TRACEPOINT,
        NEAR_OOM: KPROBE,
        CHARGE_FAILURE: UNAVAILABLE,
    }
    for probe in (MEMCG_OOM, OOM_CONTEXT, OOM_KILL, CHARGE_FAILURE):
        reason = p.choice(probe).reason
        assert "fentry: needs kernel BTF" in reason
        assert "kprobe: reads kernel structs, needs offsets from BTF" in reason
    assert not p.btf


def test_without_btf_the_plan_notes_what_is_lost_and_why() -> None:
    (note,) = plan(features(**NO_BTF)).notes
    assert note.startswith("no kernel BTF (disabled by --no-btf)")
    assert "unknown" in note


@pytest.mark.parametrize(
    ("symbols", "target"),
    [
        pytest.param({"try_charge_memcg"}, "try_charge_memcg", id="5.14+: try_charge_memcg"),
        pytest.param({"try_charge"}, "try_charge", id="before 5.14: try_charge"),
        pytest.param({"try_charge", "try_charge_memcg"}, "try_charge_memcg", id="both: the newer name"),
    ],
)
@pytest.mark.parametrize("tier_features", [{}, NO_FENTRY], ids=["fentry", "kprobe"])
def test_charge_failure_hooks_whichever_charge_function_the_kernel_has(
    symbols: set[str], target: str, tier_features: dict[str, Any]
) -> None:
    syms = (FUNCTIONS - {"try_charge_memcg"}) | symbols
    choice = plan(features(symbols=frozenset(syms), **tier_features)).choice(CHARGE_FAILURE)
    assert choice.target == target


def test_charge_failure_without_either_charge_function_is_unavailable_naming_both() -> None:
    choice = plan(features(symbols=FUNCTIONS - {"try_charge_memcg"})).choice(CHARGE_FAILURE)
    assert choice.tier == UNAVAILABLE
    assert "fentry: try_charge_memcg/try_charge not in kallsyms" in choice.reason
    assert "kprobe: try_charge_memcg/try_charge not in kallsyms" in choice.reason


def test_missing_function_moves_only_its_probe_to_a_tracepoint() -> None:
    p = plan(features(symbols=FUNCTIONS - {"__oom_kill_process"}))
    assert p.choice(OOM_KILL).tier == TRACEPOINT
    assert p.choice(OOM_KILL).reason == (
        "fentry: __oom_kill_process not in kallsyms; kprobe: __oom_kill_process not in kallsyms"
    )
    assert p.choice(MEMCG_OOM).tier == FENTRY


def test_near_oom_tracepoint_needs_both_reclaim_begin_and_end() -> None:
    p = plan(features(**NO_FENTRY, kprobes=False, tracepoints=frozenset({MARK_VICTIM, RECLAIM_BEGIN})))
    choice = p.choice(NEAR_OOM)
    assert choice.tier == UNAVAILABLE
    assert f"tracepoint: {RECLAIM_BEGIN}, {RECLAIM_END} not found in tracefs" in choice.reason


def test_nothing_available_makes_every_probe_unavailable_with_a_reason() -> None:
    p = plan(features(**NO_BTF, kprobes=False, symbols=frozenset(), tracepoints=frozenset()))
    assert tiers(p) == dict.fromkeys(PROBES, UNAVAILABLE)
    assert all(c.reason for c in p.choices)


# ---- Plan.downgrade ----


def test_downgrade_moves_one_probe_one_tier_down_and_records_why() -> None:
    f = features()
    p = plan(f).downgrade(OOM_KILL, "attach failed: Invalid argument", f)
    assert p.choice(OOM_KILL).tier == KPROBE
    assert p.choice(OOM_KILL).target == "__oom_kill_process"
    assert p.choice(OOM_KILL).reason == "fentry: attach failed: Invalid argument"
    assert {probe: tier for probe, tier in tiers(p).items() if probe != OOM_KILL} == dict.fromkeys(
        set(PROBES) - {OOM_KILL}, FENTRY
    )


def test_downgrade_skips_tiers_the_kernel_cannot_offer() -> None:
    f = features(kprobes=False)
    p = plan(f).downgrade(OOM_KILL, "refused", f)
    assert p.choice(OOM_KILL).tier == TRACEPOINT
    assert p.choice(OOM_KILL).reason == "fentry: refused; kprobe: kernel has no kprobes (CONFIG_KPROBES)"


def test_downgrade_from_the_last_tier_leaves_the_probe_unavailable() -> None:
    f = features(**NO_FENTRY, kprobes=False)
    p = plan(f).downgrade(OOM_KILL, "refused", f)
    assert p.choice(OOM_KILL).tier == UNAVAILABLE
    assert p.choice(OOM_KILL).reason.endswith("; tracepoint: refused")


def test_downgrade_of_an_unavailable_probe_keeps_it_unavailable() -> None:
    f = features(**NO_FENTRY, kprobes=False)
    p = plan(f).downgrade(MEMCG_OOM, "refused", f)
    assert p.choice(MEMCG_OOM).tier == UNAVAILABLE


def test_downgrade_keeps_the_plan_btf_flag_and_notes() -> None:
    f = features(**NO_BTF)
    before = plan(f)
    after = before.downgrade(NEAR_OOM, "refused", f)
    assert (after.btf, after.notes) == (before.btf, before.notes)
    assert after.choice(NEAR_OOM).tier == TRACEPOINT


def test_downgrade_keeps_the_reasons_earlier_tiers_were_refused() -> None:
    f = features(**NO_FENTRY)
    p = plan(f).downgrade(OOM_KILL, "refused", f)
    assert p.choice(OOM_KILL).tier == TRACEPOINT
    assert "fentry: kernel refused to load an fentry program" in p.choice(OOM_KILL).reason


# ---- read_symbols ----


KALLSYMS = """\
ffffffff81234560 T mem_cgroup_out_of_memory
ffffffff81234570 t oom_kill_process
ffffffff81234580 t __oom_kill_process.constprop.0
ffffffff81234590 t try_charge_memcg.isra.0
ffffffff812345a0 t try_to_free_mem_cgroup_pages.cold
ffffffff812345b0 W weak_function
ffffffff812345c0 d some_data
ffffffff812345d0 D try_charge
ffffffff812345e0 t module_function\t[some_module]
0000000000000000 T zeroed_address_as_non_root
"""


def test_read_symbols_keeps_text_symbols_including_weak_and_module_ones(tmp_path: Path) -> None:
    (tmp_path / "kallsyms").write_text(KALLSYMS)
    assert read_symbols(tmp_path / "kallsyms") == {
        "mem_cgroup_out_of_memory",
        "oom_kill_process",
        "weak_function",
        "module_function",
        "zeroed_address_as_non_root",
    }


@pytest.mark.parametrize("name", ["__oom_kill_process", "try_charge_memcg", "try_to_free_mem_cgroup_pages"])
def test_read_symbols_ignores_suffixed_clones(tmp_path: Path, name: str) -> None:
    (tmp_path / "kallsyms").write_text(KALLSYMS)
    assert name not in read_symbols(tmp_path / "kallsyms")


def test_read_symbols_ignores_data_symbols(tmp_path: Path) -> None:
    (tmp_path / "kallsyms").write_text(KALLSYMS)
    assert "try_charge" not in read_symbols(tmp_path / "kallsyms")
    assert "some_data" not in read_symbols(tmp_path / "kallsyms")


def test_read_symbols_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_symbols(tmp_path / "missing") == frozenset()


# ---- detect ----

MARK_VICTIM_FORMAT_6X = """\
name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: "pid=%d comm=%s", REC->pid, __get_str(comm)
"""
MARK_VICTIM_FORMAT_OLD = """\
name: mark_victim
ID: 412
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: "pid=%d", REC->pid
"""
KALLSYMS_ALL = "".join(f"ffffffff81000000 T {name}\n" for name in sorted(FUNCTIONS))
RECLAIM_FORMAT = "name: x\nformat:\n\tfield:int order;\toffset:8;\tsize:4;\tsigned:1;\n"


def make_tree(
    root: Path,
    kallsyms: str = KALLSYMS_ALL,
    tracepoints: dict[str, str] | None = None,
    tracefs: str = "kernel/tracing",
    kprobes: str | None = "bus",
    controllers: str | None = "cpuset cpu io memory hugetlb pids rdma misc",
    btf: bytes | None = None,
) -> tuple[Path, Path]:
    """A fixture /proc and /sys; returns (proc_root, sys_root)."""
    proc, sys = root / "proc", root / "sys"
    proc.mkdir()
    (proc / "kallsyms").write_text(kallsyms)
    events = sys / tracefs / "events"
    events.mkdir(parents=True)
    if tracepoints is None:
        tracepoints = {
            MARK_VICTIM: MARK_VICTIM_FORMAT_6X,
            RECLAIM_BEGIN: RECLAIM_FORMAT,
            RECLAIM_END: RECLAIM_FORMAT,
        }
    for name, text in tracepoints.items():
        (events / name).mkdir(parents=True)
        (events / name / "format").write_text(text)
    if kprobes == "bus":
        (sys / "bus/event_source/devices/kprobe").mkdir(parents=True)
    elif kprobes == "tracefs":
        (sys / tracefs / "kprobe_events").write_text("")
    if controllers is not None:
        (sys / "fs/cgroup").mkdir(parents=True)
        (sys / "fs/cgroup/cgroup.controllers").write_text(controllers + "\n")
    if btf is not None:
        (sys / "kernel/btf").mkdir(parents=True)
        (sys / "kernel/btf/vmlinux").write_bytes(btf)
    return proc, sys


class FentryLoads:
    """Stands in for tracer.kernel.fentry_check.try_load_fentry: unit tests never call bpf()."""

    def __init__(self) -> None:
        self.answer: str | None = "stub: no load in unit tests"
        self.func_ids: list[int] = []

    def __call__(self, func_id: int) -> str | None:
        self.func_ids.append(func_id)
        return self.answer


@pytest.fixture(autouse=True)
def fentry_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[FentryLoads]:
    stub = FentryLoads()
    monkeypatch.setattr(fentry_check, "try_load_fentry", stub)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    yield stub


@pytest.fixture(params=[0, 65534], ids=["as root", "as nobody"])
def euid(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    uid: int = request.param
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    return uid


def test_detect_reads_symbols_tracepoints_kprobes_and_cgroup2(tmp_path: Path, euid: int) -> None:
    proc, sys = make_tree(tmp_path, btf=kernel_btf())
    f = detect(proc, sys, release="6.18.0-fixture")
    assert f.release == "6.18.0-fixture"
    assert f.symbols == FUNCTIONS
    assert f.tracepoints == TRACEPOINTS
    assert f.kprobes
    assert f.cgroup2_memory
    assert f.btf and f.btf_error is None


def test_detect_without_the_fentry_test_function_in_btf_refuses_fentry_whoever_runs_it(
    tmp_path: Path, euid: int, fentry_loads: FentryLoads
) -> None:
    proc, sys = make_tree(tmp_path, btf=kernel_btf(with_func=False))
    f = detect(proc, sys)
    assert (f.fentry, f.fentry_reason) == (False, "mem_cgroup_out_of_memory not in BTF")
    assert fentry_loads.func_ids == []


def test_detect_as_non_root_does_not_claim_fentry_works(
    tmp_path: Path, fentry_loads: FentryLoads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    fentry_loads.answer = None
    proc, sys = make_tree(tmp_path, btf=kernel_btf(with_func=True))
    f = detect(proc, sys)
    assert (f.fentry, f.fentry_reason) == (False, "not verified: loading a test program needs root")
    assert fentry_loads.func_ids == []


@pytest.mark.parametrize(
    ("answer", "fentry", "reason"),
    [
        pytest.param(None, True, "", id="load test passes"),
        pytest.param("kernel refused: EPERM", False, "kernel refused: EPERM", id="load test refused"),
    ],
)
def test_detect_as_root_believes_the_fentry_load_test(
    tmp_path: Path,
    fentry_loads: FentryLoads,
    monkeypatch: pytest.MonkeyPatch,
    answer: str | None,
    fentry: bool,
    reason: str,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    fentry_loads.answer = answer
    proc, sys = make_tree(tmp_path, btf=kernel_btf(with_func=True))
    f = detect(proc, sys)
    assert (f.fentry, f.fentry_reason) == (fentry, reason)
    assert len(fentry_loads.func_ids) == 1 and fentry_loads.func_ids[0] > 0


def test_detect_refuses_fentry_on_an_arch_without_trampolines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    proc, sys = make_tree(tmp_path, btf=kernel_btf(with_func=True))
    f = detect(proc, sys)
    assert (f.fentry, f.fentry_reason) == (False, "no BPF trampolines on riscv64")


def test_detect_without_a_btf_file_says_where_it_looked(tmp_path: Path, euid: int) -> None:
    proc, sys = make_tree(tmp_path, btf=None)
    f = detect(proc, sys)
    assert not f.btf
    assert f.btf_error is not None and str(sys / "kernel/btf/vmlinux") in f.btf_error
    assert "CONFIG_DEBUG_INFO_BTF" in f.btf_error
    assert (f.fentry, f.fentry_reason) == (False, "needs kernel BTF")
    assert not f.mark_victim_raw_task


def test_detect_with_btf_disabled_says_so_and_ignores_the_blob(tmp_path: Path, euid: int) -> None:
    proc, sys = make_tree(tmp_path, btf=kernel_btf(with_func=True))
    f = detect(proc, sys, use_btf=False)
    assert (f.btf, f.btf_error) == (False, "disabled by --no-btf")
    assert not f.fentry and not f.mark_victim_raw_task


def test_detect_uses_an_explicit_btf_path(tmp_path: Path, euid: int) -> None:
    proc, sys = make_tree(tmp_path, btf=None)
    path = tmp_path / "elsewhere.btf"
    path.write_bytes(kernel_btf())
    assert detect(proc, sys, btf_path=path).btf


def test_detect_with_btf_lacking_a_needed_member_reports_it_as_the_btf_error(
    tmp_path: Path, euid: int
) -> None:
    proc, sys = make_tree(tmp_path, btf=kernel_btf(omit={"oom_control.constraint"}))
    f = detect(proc, sys)
    assert not f.btf
    assert f.btf_error == "kernel BTF has no member oom_control.constraint"
    assert f.fentry_reason == "needs kernel BTF"


def test_detect_with_a_corrupt_btf_file_reports_it(tmp_path: Path, euid: int) -> None:
    proc, sys = make_tree(tmp_path, btf=b"\x00" * 64)
    f = detect(proc, sys)
    assert not f.btf
    assert f.btf_error is not None and "not a BTF blob" in f.btf_error


@pytest.mark.parametrize(
    ("mark_victim", "raw"),
    [
        pytest.param("task", True, id="6.9+ prototype: raw tracepoint has the task"),
        pytest.param("int", False, id="old prototype: pid only"),
        pytest.param(None, False, id="no btf_trace typedef"),
    ],
)
def test_detect_reads_the_mark_victim_prototype_from_btf(
    tmp_path: Path, euid: int, mark_victim: str | None, raw: bool
) -> None:
    proc, sys = make_tree(tmp_path, btf=kernel_btf(mark_victim=mark_victim))
    assert detect(proc, sys).mark_victim_raw_task is raw


@pytest.mark.parametrize(
    ("fmt", "fields"),
    [
        pytest.param(
            MARK_VICTIM_FORMAT_6X,
            {
                "pid",
                "comm",
                "total_vm",
                "anon_rss",
                "file_rss",
                "shmem_rss",
                "uid",
                "pgtables",
                "oom_score_adj",
            },
            id="6.x format",
        ),
        pytest.param(MARK_VICTIM_FORMAT_OLD, {"pid"}, id="old format"),
    ],
)
def test_detect_reads_mark_victim_fields_without_common_ones(
    tmp_path: Path, fmt: str, fields: set[str]
) -> None:
    proc, sys = make_tree(
        tmp_path, tracepoints={MARK_VICTIM: fmt, RECLAIM_BEGIN: RECLAIM_FORMAT, RECLAIM_END: RECLAIM_FORMAT}
    )
    assert detect(proc, sys).mark_victim_fields == fields


def test_detect_finds_tracefs_under_debugfs(tmp_path: Path) -> None:
    proc, sys = make_tree(tmp_path, tracefs="kernel/debug/tracing")
    assert detect(proc, sys).tracepoints == TRACEPOINTS


def test_detect_lists_only_tracepoints_with_a_format_file(tmp_path: Path) -> None:
    proc, sys = make_tree(tmp_path, tracepoints={RECLAIM_BEGIN: RECLAIM_FORMAT})
    (sys / "kernel/tracing/events/oom/mark_victim").mkdir(parents=True)  # directory, no format
    f = detect(proc, sys)
    assert f.tracepoints == {RECLAIM_BEGIN}
    assert f.mark_victim_fields == frozenset()


def test_detect_without_tracefs_has_no_tracepoints(tmp_path: Path) -> None:
    proc, sys = make_tree(tmp_path, tracefs="elsewhere", kprobes=None)
    f = detect(proc, sys)
    assert f.tracepoints == frozenset()
    assert not f.kprobes


@pytest.mark.parametrize(
    ("kprobes", "expected"),
    [
        pytest.param("bus", True, id="kprobe PMU in sysfs"),
        pytest.param("tracefs", True, id="kprobe_events in tracefs"),
        pytest.param(None, False, id="neither"),
    ],
)
def test_detect_finds_kprobe_support(tmp_path: Path, kprobes: str | None, expected: bool) -> None:
    proc, sys = make_tree(tmp_path, kprobes=kprobes)
    assert detect(proc, sys).kprobes is expected


@pytest.mark.parametrize(
    ("controllers", "expected"),
    [
        pytest.param("cpuset cpu io memory pids", True, id="memory controller at the v2 root"),
        pytest.param("cpuset cpu io pids", False, id="v2 without memory (hybrid host)"),
        pytest.param("cpu memoryx", False, id="a similar name is not memory"),
        pytest.param(None, False, id="no cgroup2 root (v1 host)"),
    ],
)
def test_detect_finds_the_v2_memory_controller(
    tmp_path: Path, controllers: str | None, expected: bool
) -> None:
    proc, sys = make_tree(tmp_path, controllers=controllers)
    assert detect(proc, sys).cgroup2_memory is expected


def test_detect_skips_suffixed_clones_in_kallsyms(tmp_path: Path) -> None:
    kallsyms = "ffffffff81000000 t __oom_kill_process.isra.0\nffffffff81000010 T oom_kill_process\n"
    proc, sys = make_tree(tmp_path, kallsyms=kallsyms)
    assert detect(proc, sys).symbols == {"oom_kill_process"}


def test_detected_fixture_kernel_without_fentry_plans_kprobes(tmp_path: Path, euid: int) -> None:
    proc, sys = make_tree(tmp_path, btf=kernel_btf())
    p = plan(detect(proc, sys))
    assert tiers(p) == dict.fromkeys(PROBES, KPROBE)
    assert p.choice(OOM_KILL).reason == "fentry: mem_cgroup_out_of_memory not in BTF"


def test_detect_with_tracefs_unreadable_to_this_user_reports_no_tracepoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, sys = make_tree(tmp_path, kprobes=None)
    tracefs = str(sys / "kernel")
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # What a user sees under /sys/kernel/tracing (drwx------ root): root ignores modes,
        # so the denial is simulated rather than made with chmod.
        if str(path).startswith(tracefs + "/tracing/") or str(path).startswith(tracefs + "/debug/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    f = detect(proc, sys)
    assert f.tracepoints == frozenset()
