import pytest

from tests.unit.conftest import KERNEL_ENUMS, KERNEL_OFFSETS, BtfBuilder, kernel_btf
from tracer.kernel.btf import Btf, BtfError
from tracer.kernel.offsets import constraint_names, kernel_constants
from tracer.schema import CONSTRAINTS


@pytest.mark.parametrize("layout", ["percpu_counter", "mm_rss_stat"])
def test_kernel_constants_report_every_member_offset_from_btf(layout: str) -> None:
    constants = kernel_constants(Btf(kernel_btf(layout)))
    assert {k: constants[k] for k in KERNEL_OFFSETS} == KERNEL_OFFSETS


@pytest.mark.parametrize("layout", ["percpu_counter", "mm_rss_stat"])
def test_kernel_constants_report_enum_values_from_btf(layout: str) -> None:
    constants = kernel_constants(Btf(kernel_btf(layout)))
    assert {k: constants[k] for k in KERNEL_ENUMS} == KERNEL_ENUMS


def test_kernel_constants_hold_nothing_but_offsets_enums_and_the_rss_layout() -> None:
    constants = kernel_constants(Btf(kernel_btf()))
    assert set(constants) == set(KERNEL_OFFSETS) | set(KERNEL_ENUMS) | {"RSS_STAT_STRIDE", "RSS_STAT_INNER"}


@pytest.mark.parametrize(
    ("layout", "stride", "inner"),
    [
        # struct percpu_counter { raw_spinlock_t lock; s64 count; struct list_head list; s32 *counters; }
        pytest.param("percpu_counter", 40, 8, id="6.2+: array of percpu_counter, read .count"),
        # struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
        pytest.param("mm_rss_stat", 8, 0, id="before 6.2: mm_rss_stat of atomic_long_t"),
    ],
)
def test_rss_stat_stride_and_inner_offset_follow_the_kernels_layout(
    layout: str, stride: int, inner: int
) -> None:
    constants = kernel_constants(Btf(kernel_btf(layout)))
    assert (constants["RSS_STAT_STRIDE"], constants["RSS_STAT_INNER"]) == (stride, inner)


def test_optional_constants_are_included_when_btf_has_them() -> None:
    constants = kernel_constants(Btf(kernel_btf(optional=True)))
    assert constants["OFF_SIGNAL_OOM_MM"] == 1064
    assert constants["NEAR_OOM_FN_ARGS"] == 5  # 6.11+: int *swappiness added


def test_optional_constants_are_left_out_when_btf_lacks_them() -> None:
    constants = kernel_constants(Btf(kernel_btf(optional=False)))
    assert "OFF_SIGNAL_OOM_MM" not in constants
    assert "NEAR_OOM_FN_ARGS" not in constants


def test_anon_rss_counter_address_matches_get_mm_counter() -> None:
    """OFF_MM_RSS_STAT + MM_ANONPAGES * stride + inner: the percpu_counter.count of rss_stat[1]."""
    c = kernel_constants(Btf(kernel_btf("percpu_counter")))
    address = c["OFF_MM_RSS_STAT"] + c["MM_ANONPAGES_IDX"] * c["RSS_STAT_STRIDE"] + c["RSS_STAT_INNER"]
    assert address == 960 + 1 * 40 + 8


@pytest.mark.parametrize(
    ("omitted", "message"),
    [
        pytest.param("oom_control", "no struct oom_control", id="struct"),
        pytest.param("task_struct", "no struct task_struct", id="struct only forward-declared"),
        pytest.param("task_struct.real_cred", "no member task_struct.real_cred", id="member"),
        pytest.param("kernfs_node.id", "no member kernfs_node.id", id="member of an anonymous union"),
        pytest.param("page_counter.max", "no member page_counter.max", id="member of an anonymous struct"),
        pytest.param("mm_struct.rss_stat", "no member mm_struct.rss_stat", id="rss_stat"),
        pytest.param("memory_cgrp_id", "no enum value memory_cgrp_id", id="cgroup subsystem id"),
        pytest.param("CONSTRAINT_MEMCG", "no enum value CONSTRAINT_MEMCG", id="constraint"),
        pytest.param("MM_SHMEMPAGES", "no enum value MM_SHMEMPAGES", id="mm counter"),
    ],
)
def test_kernel_constants_raise_btf_error_naming_what_is_missing(omitted: str, message: str) -> None:
    with pytest.raises(BtfError, match=message.replace(".", r"\.")):
        kernel_constants(Btf(kernel_btf(omit={omitted})))


def test_unknown_rss_stat_layout_is_a_btf_error() -> None:
    """rss_stat as a plain integer is neither layout oomtrace knows how to read."""
    with pytest.raises(BtfError, match=r"unknown layout of mm_struct\.rss_stat"):
        kernel_constants(Btf(kernel_btf("unsigned long")))


def test_constraint_names_map_kernel_enum_values_to_schema_names() -> None:
    assert constraint_names(Btf(kernel_btf())) == {0: "global", 1: "cpuset", 2: "memory_policy", 3: "memcg"}


def test_constraint_names_follow_the_kernels_numbering() -> None:
    b = BtfBuilder()
    b.enum("oom_constraint", [("CONSTRAINT_NONE", 0), ("CONSTRAINT_MEMCG", 7)])
    assert constraint_names(Btf(b.build())) == {0: "global", 7: "memcg"}


def test_constraint_names_without_btf_are_empty() -> None:
    assert constraint_names(None) == {}


def test_every_schema_constraint_name_is_a_kernel_enum_value_name() -> None:
    assert set(CONSTRAINTS.values()) == {"global", "cpuset", "memory_policy", "memcg"}
    assert all(name.startswith("CONSTRAINT_") for name in CONSTRAINTS)
