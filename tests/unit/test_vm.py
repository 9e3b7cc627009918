"""QEMU command lines, task roles, the per-pod VM cache and the VM stage, on fixture trees."""

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fake_node import KUBEVIRT_CMDLINE, FakeNode, argv
from tracer import schema
from tracer.enrich import vm
from tracer.enrich.vm import PodHint, QemuInfo, VmLocator, VmStage, parse_qemu_cmdline, procfs, role_of
from tracer.resolve.tags import tags_for_path

GIB = 1 << 30
MIB = 1 << 20
UID = "968a06fb-9ab9-4819-8caf-0392ddff3d9b"
POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
CONTAINER = f"{POD}/cri-containerd-{'c' * 64}.scope"


BACKEND = '{"qom-type":"memory-backend-ram","id":"pc.ram","size":'


def qemu(*args: str) -> QemuInfo:
    return parse_qemu_cmdline(argv("/usr/bin/qemu-system-x86_64", *args))


def test_a_kubevirt_command_line_gives_vm_guest_memory_vcpus_and_devices() -> None:
    info = parse_qemu_cmdline(argv(*KUBEVIRT_CMDLINE), pid=8823)
    assert info == QemuInfo(
        vm="default/vm2",
        guest_memory_bytes=2042626048,
        vcpus=2,
        video=True,
        vfio=False,
        tpm=False,
        sev=False,
        pid=8823,
        guest_name="default_vm2",
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["-m", "2048"], 2 * GIB, id="-m MiB (older libvirt)"),
        pytest.param(["-m", "2G"], 2 * GIB, id="-m with a suffix"),
        pytest.param(["-m", "size=1994752k"], 2042626048, id="-m size=KiB"),
        pytest.param(
            ["-m", "size=1994752k,slots=16,maxmem=16G"], 2042626048, id="-m size with hotplug slots"
        ),
        pytest.param(["-m", "1.5G"], 3 * GIB // 2, id="-m fractional"),
        pytest.param(
            ["-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":2042626048}'],
            2042626048,
            id="memory-backend JSON, pc.ram",
        ),
        pytest.param(
            ["-object", "memory-backend-ram,id=pc.ram,size=2042626048"],
            2042626048,
            id="memory-backend key=value",
        ),
        pytest.param(
            ["-machine", "q35,memory-backend=mem0", "-object", "memory-backend-memfd,id=mem0,size=4G"],
            4 * GIB,
            id="the machine's memory-backend",
        ),
        pytest.param(
            [
                "-object",
                '{"qom-type":"memory-backend-ram","id":"ram-node0","size":1073741824}',
                "-numa",
                "node,nodeid=0,cpus=0,memdev=ram-node0",
                "-object",
                '{"qom-type":"memory-backend-ram","id":"ram-node1","size":1073741824}',
                "-numa",
                "node,nodeid=1,cpus=1,memdev=ram-node1",
            ],
            2 * GIB,
            id="NUMA nodes' backends summed",
        ),
        pytest.param(
            ["-m", "2048", "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":1}'],
            2 * GIB,
            id="-m wins over a backend",
        ),
        pytest.param([], None, id="no memory option"),
    ],
)
def test_guest_memory_comes_from_every_form_qemu_takes(args: list[str], expected: int | None) -> None:
    assert qemu(*args).guest_memory_bytes == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("guest=default_vm2,debug-threads=on", "default/vm2"),
        ("default_vm2", "default/vm2"),  # the key may be implied
        ("guest=harvester-public_ubuntu.jammy", "harvester-public/ubuntu.jammy"),
        ("guest=ns_name_with_underscore", None),  # a VMI name cannot hold "_"
        ("guest=harv41,debug-threads=on", None),  # a libvirt guest outside KubeVirt
        ("guest=Default_VM2", None),  # not DNS names
        ("guest=a,,b_c", None),  # ",," is a literal comma: namespace "a,b"
        ("guest=_vm", None),
        ("debug-threads=on", None),
        ("guest=" + "a" * 64 + "_vm", None),  # a namespace is at most 63 characters
    ],
)
def test_vm_name_is_namespace_slash_vmi_from_guest_name_or_nothing(value: str, expected: str | None) -> None:
    assert qemu("-name", value).vm == expected


def test_double_dash_options_are_read_like_single_dash() -> None:
    assert qemu("--name", "guest=ns_vm", "--m", "1024", "--smp", "4").vm == "ns/vm"
    assert qemu("--name", "guest=ns_vm", "--m", "1024", "--smp", "4").vcpus == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2),
        ("2,sockets=1,dies=1,cores=2,threads=1", 2),
        ("cpus=4,maxcpus=8", 4),
        ("sockets=2,cores=2,threads=2", 8),
        ("maxcpus=6", 6),
        ("0", None),
        ("-1", None),
        ("99999999", None),
        ("cores=x", None),
        ("", None),
    ],
)
def test_vcpus_come_from_smp_count_or_topology(value: str, expected: int | None) -> None:
    assert qemu("-smp", value).vcpus == expected


def test_devices_that_change_kubevirts_overhead_are_noticed() -> None:
    info = qemu(
        "-device",
        "vfio-pci,host=0000:3b:00.0,id=hostdev0",
        "-tpmdev",
        "emulator,id=tpm-tpm0,chardev=chrtpm",
        "-object",
        '{"qom-type":"sev-guest","id":"lsec0","cbitpos":47}',
        "-vga",
        "none",
    )
    assert (info.vfio, info.tpm, info.sev, info.video) == (True, True, True, False)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"/usr/bin/qemu-system-x86_64\0-m\0", id="-m without a value"),
        pytest.param(b"q\0-name\0guest=default_\xff\xfevm\0-m\0\xff\0", id="non-UTF-8"),
        pytest.param(argv("q", "-m", "99999999999999999999G", "-smp", "1" + "0" * 30), id="huge values"),
        pytest.param(argv("q", "-m", "size=-5k", "-smp", "two"), id="negative and words"),
        pytest.param(argv("q", "-object", "[" * 100000 + "]" * 100000), id="deeply nested JSON"),
        pytest.param(argv("q", "-object", BACKEND + "1e400}"), id="inf"),
        pytest.param(argv("q", "-object", BACKEND + "true}"), id="bool"),
        pytest.param(argv("q", "-object", BACKEND + "9" * 99 + "}"), id="2**330"),
    ],
)
def test_garbage_command_lines_give_null_fields_not_errors(raw: bytes) -> None:
    info = parse_qemu_cmdline(raw)
    assert info.guest_memory_bytes is None
    assert info.vcpus is None
    assert info.vm is None


def test_non_utf8_in_one_argument_spoils_only_that_field() -> None:
    info = parse_qemu_cmdline(b"q\0-name\0guest=default_\xffvm\0-m\0size=1994752k\0-smp\x002\0")
    assert (info.vm, info.guest_memory_bytes, info.vcpus) == (None, 2042626048, 2)


def test_a_command_line_cut_at_the_read_limit_drops_the_cut_argument() -> None:
    head = argv("q", "-smp", "2", "-name", "guest=ns_vm", "-m")
    raw = head + b"1" * (vm.MAX_CMDLINE_BYTES - len(head))  # the value of -m is cut off
    info = parse_qemu_cmdline(raw)
    assert info.guest_memory_bytes is None
    assert (info.vm, info.vcpus) == ("ns/vm", 2)


@given(st.binary(max_size=4096))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    info = parse_qemu_cmdline(raw)
    assert info.guest_memory_bytes is None or 0 < info.guest_memory_bytes <= vm.MAX_GUEST_MEMORY_BYTES
    assert info.vcpus is None or 0 < info.vcpus <= vm.MAX_VCPUS


@given(
    st.lists(
        st.sampled_from(["-m", "-smp", "-name", "-object", "-numa", "-machine", "2G", "size=4k", "{", ","])
        | st.text(max_size=20),
        max_size=30,
    )
)
def test_any_option_soup_parses_without_raising(args: list[str]) -> None:
    parse_qemu_cmdline(argv("q", *args))


@pytest.mark.parametrize(
    ("comm", "process_comm", "role"),
    [
        ("CPU 0/KVM", None, "vcpu"),
        ("CPU 11/KVM", "qemu-system-x86", "vcpu"),
        ("CPU 1/TCG", "qemu-system-x86", "vcpu"),
        ("qemu-system-x86", None, "qemu"),
        ("qemu-kvm", None, "qemu"),
        ("IO iothread1", "qemu-system-x86", "qemu"),
        ("vnc_worker", "qemu-kvm", "qemu"),
        ("virt-launcher", None, "virt-launcher"),
        ("virt-launcher-m", None, "virt-launcher-monitor"),
        ("virtqemud", None, "virtqemud"),
        ("rpc-virtqemud", "virtqemud", "virtqemud"),
        ("libvirtd", None, "libvirtd"),
        ("virtlogd", None, "virtlogd"),
        ("pause", None, "other"),
        ("CPU 0/KVMX", None, "other"),
        ("CPU 0/TCGX", None, "other"),
        ("memhold", "sh", "other"),
        (None, None, None),
    ],
)
def test_tasks_are_classified_by_role(comm: str | None, process_comm: str | None, role: str | None) -> None:
    assert role_of(comm, process_comm) == role


def test_a_cgroups_processes_include_its_descendants_and_leaves_are_not_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = (("pod", "1\n"), ("pod/ctr-a", "2\n3\n"), ("pod/ctr-b", ""), ("pod/ctr-b/x", "4\n"))
    for directory, procs in tree:
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "cgroup.procs").write_text(procs)
        (tmp_path / directory / "memory.stat").write_text("")  # a file, never walked into
    listed: list[str] = []
    scandir = procfs.os.scandir

    def counting_scandir(path: str) -> Any:
        listed.append(path)
        return scandir(path)

    monkeypatch.setattr(procfs.os, "scandir", counting_scandir)
    assert sorted(procfs.pids_in(tmp_path, "/pod")) == [1, 2, 3, 4]
    assert sorted(Path(d).relative_to(tmp_path).as_posix() for d in listed) == ["pod", "pod/ctr-b"]
    assert procfs.pids_in(tmp_path, "/pod/ctr-a") == [2, 3] and listed[2:] == []
    assert len(procfs.pids_in(tmp_path, "/pod", limit=2)) == 2
    assert procfs.pids_in(tmp_path, "/gone") == []


# --- the cache and the stage, on a fixture /proc and cgroup tree --------------------------------


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    node = FakeNode(tmp_path)
    node.cgroup(CONTAINER)
    node.cgroup("/system.slice/libvirtd.service")
    return node


def test_the_scan_learns_a_pods_qemu_and_reads_its_command_line_once(node: FakeNode) -> None:
    node.process(8542, "virt-launcher-m", CONTAINER)
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    found: list[vm.FoundVm] = []
    locator = VmLocator(node.memory_root, node.proc, on_found=found.append)
    assert locator.scan() == 1
    for _ in range(3):
        locator.scan()
        assert locator.for_vm(UID, CONTAINER) is not None
    info = locator.known(UID)
    assert info is not None and info.vm == "default/vm2" and info.pid == 8823
    assert locator.cmdline_reads == 1
    assert [f.key for f in found] == [UID]


def test_an_event_racing_the_scan_thread_for_a_qemu_waits_for_its_command_line(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan thread has claimed the QEMU process and is reading its command line when a kill
    # in that pod arrives: the event must get the VM, not "already being parsed, nothing yet".
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    locator = VmLocator(node.memory_root, node.proc)
    reading, release = threading.Event(), threading.Event()
    read = procfs.read_bytes

    def slow_for_the_scanner(path: str | Path, limit: int) -> bytes | None:
        if Path(path).name == "cmdline" and threading.current_thread().name == "scanner":
            reading.set()
            release.wait(10)
        return read(path, limit)

    monkeypatch.setattr(procfs, "read_bytes", slow_for_the_scanner)
    scanner = threading.Thread(target=locator.scan, name="scanner")
    scanner.start()
    assert reading.wait(10)
    answers: list[QemuInfo | None] = []
    event_path = threading.Thread(target=lambda: answers.append(locator.for_vm(UID, CONTAINER)))
    event_path.start()
    event_path.join(0.2)
    assert event_path.is_alive()  # waiting for the scanner's read, not answering None
    release.set()
    event_path.join(10)
    scanner.join(10)
    assert answers and answers[0] is not None and answers[0].vcpus == 2
    assert locator.cmdline_reads == 1


def test_a_new_process_that_execs_qemu_late_is_found_while_it_is_young(node: FakeNode) -> None:
    clock = [100.0]
    locator = VmLocator(node.memory_root, node.proc, clock=lambda: clock[0])
    node.process(1, "systemd", "/system.slice/libvirtd.service")
    assert locator.scan() == 0  # the first scan settles what is already there
    node.process(8823, "virtqemud", CONTAINER, argv(*KUBEVIRT_CMDLINE))  # forked, not yet exec'd
    for _ in range(3):
        clock[0] += 1.0
        assert locator.scan() == 0
    (node.proc / "8823" / "comm").write_text("qemu-system-x86\n")
    clock[0] += 1.0
    assert locator.scan() == 1
    assert locator.known(UID) is not None


def test_an_old_process_is_not_read_again(node: FakeNode) -> None:
    clock = [100.0]
    locator = VmLocator(node.memory_root, node.proc, clock=lambda: clock[0])
    locator.scan()
    node.process(8823, "virtqemud", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    locator.scan()
    clock[0] += vm.YOUNG_S
    locator.scan()  # settled now
    (node.proc / "8823" / "comm").write_text("qemu-system-x86\n")
    clock[0] += 1.0
    assert locator.scan() == 0


LIBVIRT_MACHINE = r"/machine.slice/machine-qemu\x2d1\x2dweb1.scope"
LIBVIRT_EMULATOR = f"{LIBVIRT_MACHINE}/libvirt/emulator"


def test_a_libvirt_machines_qemu_on_a_plain_host_is_a_vm_named_by_its_domain(node: FakeNode) -> None:
    node.cgroup(LIBVIRT_EMULATOR)
    cmdline = argv(
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "guest=web1,debug-threads=on",
        "-m",
        "size=524288k",
        "-smp",
        "2",
    )
    node.process(900, "qemu-system-x86", LIBVIRT_EMULATOR, cmdline)
    locator = VmLocator(node.memory_root, node.proc)
    assert locator.scan() == 1
    info = locator.known("machine/qemu-1-web1")
    assert info is not None and info.vm is None and info.guest_name == "web1"
    event = schema.blank_event(schema.OOM_KILL)
    event.update(tags_for_path(LIBVIRT_EMULATOR), victim_comm="qemu-system-x86", victim_tgid=900)
    out = VmStage(locator, node.proc)(event)
    assert (out["vm"], out["guest_memory_bytes"], out["vcpus"], out["victim_role"]) == (
        "web1",
        512 * MIB,
        2,
        "qemu",
    )


def test_a_plain_host_vm_is_found_by_an_event_before_the_scan(node: FakeNode) -> None:
    node.cgroup("/machine/qemu-4-db.libvirt-qemu/emulator")
    node.process(
        901,
        "qemu-system-x86",
        "/machine/qemu-4-db.libvirt-qemu/emulator",
        argv("qemu", "-name", "db", "-m", "256"),
    )
    locator = VmLocator(node.memory_root, node.proc)
    info = locator.for_vm("machine/qemu-4-db", "/machine/qemu-4-db.libvirt-qemu/vcpu0")
    assert info is not None and info.guest_name == "db" and info.guest_memory_bytes == 256 * MIB


@pytest.mark.parametrize(
    "name",
    ["a\x1b[31mred", "a/b", "", "x" * 300, "tab\there"],
    ids=["escape", "slash", "empty", "long", "tab"],
)
def test_a_guest_name_no_machine_can_have_is_not_a_vm_name(name: str) -> None:
    assert qemu("-name", f"guest={name}").guest_name is None


def test_libvirts_capability_probe_in_the_pod_is_not_taken_for_the_vm(node: FakeNode) -> None:
    # Seen with a real libvirtd in a pod (tests/kernel/test_libvirt_vm.py): it probes QEMU's
    # capabilities at start, a QEMU in the pod that runs no guest, before it starts the VM's.
    probe = argv(
        "/usr/bin/qemu-system-x86_64",
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        "none,accel=kvm:tcg",
        "-qmp",
        "unix:/var/lib/libvirt/qemu/capabilities.monitor.sock",
    )
    node.process(8800, "qemu-system-x86", CONTAINER, probe)
    locator = VmLocator(node.memory_root, node.proc)
    assert locator.scan() == 0 and locator.known(UID) is None
    node.exit(8800)
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    assert locator.scan() == 1
    info = locator.known(UID)
    assert info is not None and info.pid == 8823 and info.vm == "default/vm2"


def test_qemu_outside_a_pod_is_not_a_kubevirt_vm_and_its_command_line_is_not_read(node: FakeNode) -> None:
    node.process(700, "qemu-system-x86", "/system.slice/libvirtd.service", argv("qemu", "-name", "guest=a_b"))
    locator = VmLocator(node.memory_root, node.proc)
    assert locator.scan() == 0
    assert locator.cmdline_reads == 0


def test_an_event_for_an_unknown_pod_scans_that_pod_once_per_interval(node: FakeNode) -> None:
    clock = [100.0]
    locator = VmLocator(node.memory_root, node.proc, clock=lambda: clock[0])
    assert locator.for_vm(UID, CONTAINER) is None  # scanned: no QEMU yet
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    assert locator.for_vm(UID, CONTAINER) is None  # not again so soon
    clock[0] += vm.POD_RESCAN_S
    info = locator.for_vm(UID, CONTAINER)
    assert info is not None and info.guest_memory_bytes == 2042626048


def test_what_was_learnt_outlives_the_qemu_process(node: FakeNode) -> None:
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    locator = VmLocator(node.memory_root, node.proc)
    locator.scan()
    node.exit(8823)  # OOM-killed
    locator.scan()
    info = locator.for_vm(UID, CONTAINER)
    assert info is not None and info.vm == "default/vm2"


def kill(**fields: Any) -> dict[str, Any]:
    event = schema.blank_event(schema.OOM_KILL)
    event.update(pod_uid=UID, cgroup=CONTAINER, task_memcg=CONTAINER)
    event.update(fields)
    return event


def test_the_stage_names_the_vm_and_the_roles_of_trigger_and_victim(node: FakeNode) -> None:
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    stage = VmStage(VmLocator(node.memory_root, node.proc), node.proc)
    event = stage(
        kill(
            trigger_comm="CPU 1/KVM",
            trigger_pid=8901,
            trigger_tgid=8823,
            victim_comm="qemu-system-x86",
            victim_tgid=8823,
        )
    )
    assert (event["vm"], event["guest_memory_bytes"], event["vcpus"]) == ("default/vm2", 2042626048, 2)
    assert (event["trigger_role"], event["victim_role"]) == ("vcpu", "qemu")
    assert set(event) == set(schema.blank_event(schema.OOM_KILL))


def test_a_qemu_thread_with_its_own_name_is_qemu_and_a_helper_thread_is_its_process(node: FakeNode) -> None:
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    node.process(8591, "virtqemud", CONTAINER)
    stage = VmStage(VmLocator(node.memory_root, node.proc), node.proc)
    assert stage(kill(trigger_comm="IO iothread1", trigger_tgid=8823))["trigger_role"] == "qemu"
    assert stage(kill(trigger_comm="rpc-virtqemud", trigger_tgid=8591))["trigger_role"] == "virtqemud"
    assert stage(kill(trigger_comm="memhold", trigger_tgid=99999))["trigger_role"] == "other"


def test_events_of_pods_without_a_vm_are_left_alone(node: FakeNode) -> None:
    node.process(4242, "nginx", CONTAINER)
    stage = VmStage(VmLocator(node.memory_root, node.proc), node.proc)
    event = stage(kill(trigger_comm="nginx", trigger_tgid=4242, victim_comm="nginx", victim_tgid=4242))
    assert all(event[k] is None for k in ("vm", "guest_memory_bytes", "vcpus", "trigger_role", "victim_role"))


def test_virt_launcher_labels_name_the_vm_when_qemu_was_never_seen(node: FakeNode) -> None:
    stage = VmStage(
        VmLocator(node.memory_root, node.proc), node.proc, lambda uid: PodHint(True, "default/vm2")
    )
    event = stage(
        kill(trigger_comm="virt-launcher", trigger_tgid=1, victim_comm="qemu-system-x86", victim_tgid=2)
    )
    assert (event["vm"], event["guest_memory_bytes"]) == ("default/vm2", None)
    assert (event["trigger_role"], event["victim_role"]) == ("virt-launcher", "qemu")


def test_events_never_carry_the_command_line(node: FakeNode) -> None:
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    stage = VmStage(VmLocator(node.memory_root, node.proc), node.proc)
    text = json.dumps(stage(kill(trigger_comm="CPU 0/KVM", trigger_tgid=8823)))
    assert "master-key" not in text and "debug-threads" not in text and "size=" not in text


def test_events_of_other_pods_are_not_given_this_pods_vm(node: FakeNode) -> None:
    node.process(8823, "qemu-system-x86", CONTAINER, argv(*KUBEVIRT_CMDLINE))
    other = str(uuid.uuid4())
    locator = VmLocator(node.memory_root, node.proc)
    locator.scan()
    event = VmStage(locator, node.proc)(kill(pod_uid=other, cgroup=None, trigger_comm="x"))
    assert event["vm"] is None


def test_a_broken_event_is_reported_and_still_goes_out(node: FakeNode) -> None:
    errors: list[str] = []
    stage = VmStage(VmLocator(node.memory_root, node.proc), node.proc, None, errors.append)
    event = {"event": "oom_kill", "pod_uid": UID, "cgroup": 12345}
    assert stage(event) is event
    assert len(errors) == 1 and "vm attribution failed" in errors[0]


def test_the_background_scan_waits_while_events_arrive_but_not_for_ever(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In an OOM storm its reads trade the GIL with the event thread, each trade a wait for a CPU.
    from tracer.enrich.vm import locator as locator_module

    monkeypatch.setattr(locator_module, "MAX_SCAN_DEFERRAL_S", 0.6)
    locator = VmLocator(node.memory_root, node.proc, scan_interval_s=0.05)
    scans: list[float] = []
    real_scan = locator.scan
    monkeypatch.setattr(locator, "scan", lambda: (scans.append(time.monotonic()), real_scan())[1])
    locator.start()
    try:
        busy_until = time.monotonic() + 1.5
        while time.monotonic() < busy_until:  # events every 10 ms for 1.5 s
            locator.note_event()
            time.sleep(0.01)
        during = len(scans)
        time.sleep(0.5)  # quiet: scans every 50 ms again
        after = len(scans) - during
    finally:
        locator.close()
    # the first scan at start, then one per deferral limit (0.6 s) while busy; unthrottled
    # it would have been about 30 scans
    assert 2 <= during <= 4, scans
    assert after >= 3  # about 10
