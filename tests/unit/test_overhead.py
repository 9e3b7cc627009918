"""KubeVirt's overhead formula, Harvester's recommendation and the overhead stage, with the seed's numbers."""

import math
from pathlib import Path
from typing import Any

import pytest

from tests.fake_node import FakeNode
from tracer import schema
from tracer.enrich import overhead
from tracer.enrich.overhead import MIB, OverheadStage, kubevirt_overhead, page_floor, parse_version, recommend
from tracer.enrich.vm import QemuInfo
from tracer.resolve.tags import tags_for_path

GIB = 1 << 30
UID = "968a06fb-9ab9-4819-8caf-0392ddff3d9b"
POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
CONTAINER = f"{POD}/cri-containerd-{'c' * 64}.scope"
SEED_LIMIT = 2_412_421_120  # the seed's memory.limit_in_bytes of a VM configured with 2 GiB
SEED_GUEST = 1948 * MIB  # memory.guest: 2 GiB minus Harvester's 100 MiB reservation


def test_the_seeds_arithmetic_2_gib_vm_has_252_mib_over_its_memory_and_353_mib_beside_its_guest() -> None:
    assert SEED_LIMIT - 2 * GIB == 264_937_472
    assert round((SEED_LIMIT - 2 * GIB) / MIB) == 253  # "~ 252 M" in the seed (252.66 MiB)
    assert SEED_GUEST == 2 * GIB - 100 * MIB
    assert SEED_LIMIT - SEED_GUEST == 369_795_072
    assert round((SEED_LIMIT - SEED_GUEST) / MIB) == 353


def test_kubevirts_formula_reproduces_the_seeds_cgroup_limit_to_the_byte() -> None:
    # The seed's VM: limits.memory 2Gi, requests.memory 1365Mi, 2 vCPUs, display on; Harvester
    # 1.3 (KubeVirt 1.x, 210 MiB fixed). The kernel keeps whole pages of the limit.
    added = kubevirt_overhead(1365 * MIB, 2, parse_version("1.1"))
    assert added == 264_939_521
    assert page_floor(2 * GIB + added) == SEED_LIMIT


def test_harvesters_documented_example_2_gib_1_vcpu_is_246_mib_and_369_mib_with_ratio_1_5() -> None:
    v = parse_version(overhead.DEFAULT_KUBEVIRT_VERSION)
    assert kubevirt_overhead(2 * GIB, 1, v) == 246 * MIB
    assert round(kubevirt_overhead(2 * GIB, 1, v, ratio=1.5) / MIB) == 369


@pytest.mark.parametrize(
    ("version", "fixed_mib", "video_mib"),
    [
        ("0.54", 180, 16),
        ("0.58.1", 180, 16),
        ("v0.59.0", 210, 16),
        ("1.3", 210, 16),
        ("1.4.0", 210, 16),
        ("1.5", 220, 16),
        ("1.6.0-rc.1", 220, 32),
        ("1.9", 220, 32),
        ("1.10", 240, 32),
    ],
)
def test_each_kubevirt_release_range_has_its_fixed_overhead_and_video_ram(
    version: str, fixed_mib: int, video_mib: int
) -> None:
    v = parse_version(version)
    assert overhead.fixed_overhead(v).total_bytes == fixed_mib * MIB
    with_video = kubevirt_overhead(0, 1, v, video=True)
    assert with_video - kubevirt_overhead(0, 1, v, video=False) == video_mib * MIB
    assert kubevirt_overhead(0, 1, v, video=False) == (fixed_mib + 8 + 8) * MIB


@pytest.mark.parametrize("text", ["", "one.three", "1", "1.3.4.5", "0.53", "0.9", "1.3 beta", "v", "9999.1"])
def test_unparseable_or_unmodelled_versions_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


def test_extras_add_what_kubevirt_adds_and_dedicated_cpus_come_after_the_ratio() -> None:
    v = (1, 3)
    base = kubevirt_overhead(2 * GIB, 2, v)
    assert kubevirt_overhead(2 * GIB, 2, v, vfio=True) - base == 1024 * MIB
    assert kubevirt_overhead(2 * GIB, 2, v, sev=True) - base == 256 * MIB
    assert kubevirt_overhead(2 * GIB, 2, v, tpm=True) - base == 53 * MIB
    assert kubevirt_overhead(2 * GIB, 2, v, dedicated=True) - base == 100 * MIB
    ratio_2 = kubevirt_overhead(2 * GIB, 2, v, ratio=2.0)
    assert kubevirt_overhead(2 * GIB, 2, v, ratio=2.0, dedicated=True) - ratio_2 == 100 * MIB
    assert abs(ratio_2 - 2 * base) < 1000  # kilo-unit rounding


def test_vcpus_unknown_count_as_one_like_kubevirt() -> None:
    assert kubevirt_overhead(GIB, None, (1, 3)) == kubevirt_overhead(GIB, 1, (1, 3))


def test_a_recommendation_leaves_ten_percent_over_what_the_non_guest_part_used() -> None:
    base = kubevirt_overhead(1365 * MIB, 2, (1, 3))  # 252.66 MiB
    rec = recommend(SEED_LIMIT - SEED_GUEST, base)  # the whole 353 MiB budget was used
    assert rec.needed_budget_bytes == math.ceil(369_795_072 * 1.1)
    # reservedMemory, with the ratio off: the smallest whole MiB that is enough.
    assert rec.reserved_memory_bytes % MIB == 0
    assert (
        base + rec.reserved_memory_bytes >= rec.needed_budget_bytes > base + rec.reserved_memory_bytes - MIB
    )
    assert rec.as_dict()["reserved_memory"] == "136Mi"
    # The ratio, with no reservation: the smallest tenth that is enough.
    assert rec.overhead_ratio == 1.6
    assert base * 1.6 >= rec.needed_budget_bytes > base * 1.5
    assert rec.as_dict()["additional_guest_memory_overhead_ratio"] == "1.6"


def test_a_small_non_guest_use_needs_no_reservation_and_ratio_one() -> None:
    rec = recommend(10 * MIB, 250 * MIB)
    assert (rec.reserved_memory_bytes, rec.overhead_ratio) == (0, 1.0)
    assert recommend(-5 * MIB, 250 * MIB).needed_budget_bytes == 0


def test_a_need_beyond_ratio_ten_is_only_answered_with_reserved_memory() -> None:
    rec = recommend(4 * GIB, 250 * MIB)
    assert rec.overhead_ratio is None
    assert rec.as_dict()["additional_guest_memory_overhead_ratio"] is None
    assert rec.reserved_memory_bytes >= math.ceil(4 * GIB * 1.1) - 250 * MIB
    assert "no overhead ratio" in rec.text


def test_dedicated_cpus_memory_is_not_multiplied_by_the_ratio() -> None:
    rec = recommend(400 * MIB, 200 * MIB, dedicated_bytes=100 * MIB)
    assert rec.overhead_ratio is not None
    assert 200 * MIB * rec.overhead_ratio + 100 * MIB >= rec.needed_budget_bytes


# --- the stage ----------------------------------------------------------------------------


INFO = QemuInfo("default/vm2", SEED_GUEST, 2, video=True, pid=8823)


def stage_for(node: FakeNode, info: QemuInfo | None = INFO, errors: list[str] | None = None) -> OverheadStage:
    on_error = (errors if errors is not None else []).append
    return OverheadStage(node.memory_root, (1, 3), lambda uid: info, on_error, node.proc)


def vm_event(kind: str = schema.OOM_KILL, **fields: Any) -> dict[str, Any]:
    event = schema.blank_event(kind)
    event.update(pod_uid=UID, cgroup=CONTAINER, vm="default/vm2", guest_memory_bytes=SEED_GUEST, vcpus=2)
    event.update(fields)
    return event


@pytest.mark.parametrize("v2", [False, True], ids=["cgroup v1", "cgroup v2"])
def test_a_qemu_kill_is_budgeted_against_the_nearest_limit_with_the_kernels_rss(
    tmp_path: Path, v2: bool
) -> None:
    node = FakeNode(tmp_path, v2=v2)
    node.cgroup(POD)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, usage=SEED_LIMIT - 50 * MIB, peak=SEED_LIMIT)
    event = vm_event(
        task_memcg=CONTAINER, victim_role="qemu", anon_rss_bytes=SEED_GUEST + 30 * MIB, shmem_rss_bytes=0
    )
    o = stage_for(node)(event)["overhead"]
    assert o["memcg"] == CONTAINER and o["limit_bytes"] == SEED_LIMIT
    assert (o["usage_bytes"], o["usage_source"]) == (SEED_LIMIT, "peak")
    assert o["guest_memory_bytes"] == SEED_GUEST
    assert o["guest_resident_bytes"] == SEED_GUEST  # QEMU holds all of it, and 30 MiB of its own
    assert o["overhead_budget_bytes"] == 369_795_072
    assert o["non_guest_usage_bytes"] == 369_795_072
    assert o["kubevirt_version"] == "1.3"
    assert o["kubevirt_overhead_bytes"] == kubevirt_overhead(SEED_GUEST, 2, (1, 3))
    assert o["recommendation"]["needed_budget_bytes"] == math.ceil(369_795_072 * 1.1)
    # The numbers docs/attribution.md gives for the seed's VM.
    assert o["recommendation"]["reserved_memory"] == "135Mi"
    assert o["recommendation"]["additional_guest_memory_overhead_ratio"] == "1.6"


def test_a_plain_host_vm_gets_its_budget_but_no_kubevirt_advice(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    machine = "/machine/qemu-1-web1.libvirt-qemu"
    node.cgroup(machine, limit=600 * MIB, peak=600 * MIB)
    node.cgroup(f"{machine}/emulator")
    event = schema.blank_event(schema.OOM_KILL)
    event.update(
        tags_for_path(f"{machine}/emulator"), task_memcg=f"{machine}/emulator", guest_memory_bytes=512 * MIB
    )
    event.update(vm="web1", anon_rss_bytes=530 * MIB, shmem_rss_bytes=0, victim_role="qemu")
    o = stage_for(node, QemuInfo(None, 512 * MIB, 1, guest_name="web1"))(event)["overhead"]
    assert (o["memcg"], o["limit_bytes"], o["overhead_budget_bytes"]) == (machine, 600 * MIB, 88 * MIB)
    assert o["non_guest_usage_bytes"] == 88 * MIB  # peak 600 MiB less the 512 MiB of guest RAM QEMU held
    assert (
        o["kubevirt_version"] is None and o["kubevirt_overhead_bytes"] is None and o["recommendation"] is None
    )


def test_a_limit_on_the_pod_is_found_above_the_container(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(POD, limit=SEED_LIMIT + 60 * MIB, peak=SEED_LIMIT + 60 * MIB)
    node.cgroup(CONTAINER, peak=SEED_LIMIT)
    o = stage_for(node)(vm_event(task_memcg=CONTAINER))["overhead"]
    assert (o["memcg"], o["limit_bytes"]) == (POD, SEED_LIMIT + 60 * MIB)


def test_guest_ram_not_yet_touched_is_not_counted_as_resident(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    o = stage_for(node)(
        vm_event(task_memcg=CONTAINER, victim_role="qemu", anon_rss_bytes=GIB, shmem_rss_bytes=0)
    )["overhead"]
    assert o["guest_resident_bytes"] == GIB
    assert o["non_guest_usage_bytes"] == SEED_LIMIT - GIB


def test_without_qemus_rss_the_guest_counts_as_fully_resident(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    o = stage_for(node)(vm_event(task_memcg=CONTAINER, victim_role="virt-launcher", anon_rss_bytes=40 * MIB))[
        "overhead"
    ]
    assert o["guest_resident_bytes"] == SEED_GUEST


def test_qemus_rss_comes_from_the_memory_snapshot_when_qemu_is_not_the_victim(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    snapshot = {"tasks": [{"role": "qemu", "anon_bytes": GIB, "shmem_bytes": 4 * MIB, "rss_bytes": GIB}]}
    o = stage_for(node)(vm_event(task_memcg=CONTAINER, victim_role="other", memory_snapshot=snapshot))[
        "overhead"
    ]
    assert o["guest_resident_bytes"] == GIB + 4 * MIB


def test_a_near_oom_uses_the_kernels_usage_when_it_is_about_the_limited_cgroup(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, usage=1)
    event = vm_event(schema.NEAR_OOM, memcg=CONTAINER, usage_bytes=SEED_LIMIT - MIB, limit_bytes=SEED_LIMIT)
    o = stage_for(node)(event)["overhead"]
    assert (o["usage_bytes"], o["usage_source"]) == (SEED_LIMIT - MIB, "event")


def test_events_without_guest_memory_or_limit_get_no_overhead(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER)  # no limit anywhere: a global OOM
    assert stage_for(node)(vm_event(task_memcg=CONTAINER))["overhead"] is None
    assert stage_for(node)(vm_event(task_memcg=CONTAINER, guest_memory_bytes=None))["overhead"] is None
    assert stage_for(node)(vm_event(task_memcg="/gone/cgroup"))["overhead"] is None


def test_guaranteed_qos_adds_kubevirts_dedicated_cpu_memory(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    o = stage_for(node)(vm_event(task_memcg=CONTAINER, qos="guaranteed"))["overhead"]
    assert o["kubevirt_overhead_bytes"] == kubevirt_overhead(SEED_GUEST, 2, (1, 3), dedicated=True)


def test_a_failing_analysis_is_reported_and_the_event_still_goes_out(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    errors: list[str] = []
    event = vm_event(task_memcg=CONTAINER, victim_role="qemu", anon_rss_bytes="garbage")
    event["memory_snapshot"] = {"tasks": [{"role": "qemu", "anon_bytes": 1, "shmem_bytes": "x"}]}
    out = stage_for(node, errors=errors)(event)
    assert out["event"] == "oom_kill"
    assert out["overhead"] is None and len(errors) == 1


def test_on_other_events_qemus_rss_is_read_from_its_proc_status(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, usage=GIB + 100 * MIB)
    node.process(8823, "qemu-system-x86", CONTAINER, rss_kib=(1024 * 1024, 20 * 1024, 2048))
    o = stage_for(node)(vm_event(schema.NEAR_OOM, memcg=CONTAINER))["overhead"]
    assert (o["usage_bytes"], o["usage_source"]) == (GIB + 100 * MIB, "current")
    assert o["guest_resident_bytes"] == GIB + 2 * MIB  # anon + shmem: guest RAM is never file pages
    assert o["non_guest_usage_bytes"] == 98 * MIB
    assert o["recommendation"]["budget_sufficient"] is True  # 98 MiB + 10% fits in 353 MiB


def test_when_the_guest_cannot_all_be_resident_and_qemus_rss_is_unknown_nothing_is_recommended(
    tmp_path: Path,
) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, usage=GIB)  # less than the guest's RAM alone
    o = stage_for(node)(vm_event(schema.NEAR_OOM, memcg=CONTAINER))["overhead"]
    assert o["usage_bytes"] == GIB and o["guest_resident_bytes"] == SEED_GUEST
    assert o["non_guest_usage_bytes"] is None and o["recommendation"] is None


def test_at_an_oom_with_the_guest_all_resident_the_budget_is_not_sufficient(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    event = vm_event(
        task_memcg=CONTAINER, victim_role="qemu", anon_rss_bytes=SEED_GUEST + MIB, shmem_rss_bytes=0
    )
    rec = stage_for(node)(event)["overhead"]["recommendation"]
    assert rec["budget_sufficient"] is False
    assert "(it has 353 MiB)" in rec["text"]


def test_a_limit_below_kubevirts_own_overhead_is_called_out(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER, limit=SEED_GUEST + 100 * MIB, peak=SEED_GUEST + 100 * MIB)
    event = vm_event(task_memcg=CONTAINER, victim_role="qemu", anon_rss_bytes=SEED_GUEST, shmem_rss_bytes=0)
    assert "not set by that formula" in stage_for(node)(event)["overhead"]["recommendation"]["text"]
    node.cgroup(POD)
    seeded = vm_event(task_memcg=CONTAINER, victim_role="qemu", anon_rss_bytes=SEED_GUEST, shmem_rss_bytes=0)
    node.cgroup(CONTAINER, limit=SEED_LIMIT, peak=SEED_LIMIT)
    assert "not set by" not in stage_for(node)(seeded)["overhead"]["recommendation"]["text"]
